"""WebSocket hub: live job events for browsers and services, fed by ONE Redis subscription.

Each control-plane process runs one :class:`Hub`. On one Redis it makes a single
``PSUBSCRIBE`` on the event channels of every job (``status|progress|data|audit:*``); on a
Redis Cluster, where every plain publish would reach every node, it ``SSUBSCRIBE``s to the
sharded channel of each job its connections (and ``?wait=`` requests) follow, on the primary
that owns the job's slot, so a replica receives its own clients' events and no others. It fans
each event out to the WebSocket connections subscribed to that job. Nothing else is shared
between replicas: every replica's hub reads the same Redis, so a client may connect to any.

**Pub/Sub is only the wake-up; the job's events stream is the truth.** Every (connection,
job) subscription remembers the last seq it delivered. A published event with a seq at or
below it is a duplicate and dropped; the next seq is delivered; a seq further ahead means a
gap (Pub/Sub raced the snapshot, or the hub's Redis connection dropped) and the missing
events are read from ``job:<id>:events`` first. When the hub's own Redis connection drops it
reconnects, re-subscribes and then refills every subscription from the stream. So each
client receives each event of its jobs exactly once, in order, without gaps.

Protocol (JSON text frames)
---------------------------

Client → server::

    {"type": "subscribe", "jobId": "<id>", "since": N}   # since optional, 0 <= N <= 2^53
    {"type": "unsubscribe", "jobId": "<id>"}
    {"type": "auth", "token": "<jwt>"}                   # re-authenticate before exp
    {"type": "ping"}

Server → client::

    {"type": "snapshot", "jobId": "<id>", "seq": S, "job": <Job JSON>}
    {"type": "update", "jobId": "<id>", "seq": N, "event": <event JSON as published>}
    {"type": "unsubscribed", "jobId": "<id>"}
    {"type": "authenticated", "exp": E}                  # the new token's exp (Unix time)
    {"type": "pong"}
    {"type": "error", "message": "...", "jobId": "<id>"}     # jobId when the message had one

After ``subscribe`` the client gets the snapshot (the job as of seq ``S``), then — when
``since`` was given — the events ``(since, S]`` as updates, then every live update with seq
``> S``. Without ``since`` the updates start at ``S + 1``. An unknown job and a job the
principal may not see get the same error, ``"no such job"``. Subscribing again to a job
already subscribed on the connection restarts it (new snapshot). Bad messages (invalid JSON,
unknown type, missing ``jobId``, bad ``since``) get an error; the connection stays open.

Token expiry: a connection is authorised until its token's ``exp``, and is closed then with
4401 ``token expired``. A client that stays longer sends ``auth`` with a fresh token before
that; the connection then runs until the new ``exp`` (one timer per connection, moved on each
``auth``). The new token must name the same user with the same role: the connection's
subscriptions were checked against that principal, so any other token (or an invalid one)
closes the connection with 4401 instead of being swapped in.

Close codes
-----------

* ``4401`` — missing, invalid or expired token. The route *accepts* the upgrade and then
  closes with 4401 and a reason naming the problem (``missing token``, ``token expired``,
  ``invalid token: ...``): a browser cannot see the HTTP status of a refused upgrade, but it
  does see a close code and reason. The same code ends a connection whose token expires
  while it is open (``token expired``) or whose ``auth`` message is refused.
* ``4008`` — the client is too slow: its outgoing queue (``buffer_messages``) would overflow.
  Reason ``client too slow: N messages buffered``. The dispatcher never awaits a client's
  socket: a connection's queue is written when its transport takes more, so one client's
  paused socket holds back only its own queue.
* ``1012`` — the hub is stopping (service restart): reconnect, with ``since``.

Serve the app with ``ws_per_message_deflate=False`` and ``ws="websockets-sansio"`` (uvicorn):
each update is then built once as a frame and written as it is to every subscriber, in one
write per connection per loop iteration. Compression is per connection, so a connection that
negotiated it (or another server) gets one ASGI send per message instead: correct, but slower.

Modules
-------

* :mod:`.transport` — the WebSocket side: a connection's bounded queue and sender task, close
  codes, the ``/ws`` route and its token check;
* :mod:`.sequence` — the per-subscription state machine (syncing, live, filling) that makes
  delivery exactly-once and in order;
* :mod:`.feed` — the Redis side: the one subscription (and its re-subscription) and the reads
  of snapshots and event streams;
* :mod:`.hub` — :class:`Hub`, which wires them and speaks the protocol.
"""

from __future__ import annotations

from dualplane.control_plane.hub.hub import Hub
from dualplane.control_plane.hub.transport import add_websocket_route

__all__ = ["Hub", "add_websocket_route"]
