"""WebSocket hub: live job events for browsers and services, fed by ONE Redis subscription.

Each control-plane process runs one :class:`Hub`. It makes a single ``PSUBSCRIBE`` on the
three event channels of every job (``status|progress|data:*``) and fans each published event
out to the WebSocket connections subscribed to that job. Nothing else is shared between
replicas: every replica's hub reads the same Redis, so a client may connect to any of them.

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
  socket; each connection has its own sender task.
* ``1012`` — the hub is stopping (service restart): reconnect, with ``since``.

Serve the app with ``ws_per_message_deflate=False`` (uvicorn): compression is per
connection, so it would undo the one-serialization-per-event fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Self

import orjson
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.websockets import WebSocket, WebSocketState

from dualplane.common.bridge import Bridge, Keys
from dualplane.common.errors import UnknownJob
from dualplane.common.wire import seq_of
from dualplane.control_plane.auth import Authenticator, AuthError, Principal, bearer_token
from dualplane.control_plane.limits import MAX_SEQ, valid_job_id
from dualplane.control_plane.waits import FinishWaits

log = logging.getLogger("dualplane.hub")

EVENT_KINDS = ("status", "progress", "data", "audit")
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4008
CLOSE_RESTART = 1012
NO_SUCH_JOB = "no such job"
TOKEN_EXPIRED = "token expired"

_PONG = '{"type":"pong"}'

JobUser = Callable[[str], Awaitable[str | None]]
Verify = Callable[[str], Principal]

# Subscription states
_SYNCING = 0  # snapshot/replay in progress: live events are buffered in ``pending``
_LIVE = 1  # delivering: seq == last + 1 goes straight to the connection
_FILLING = 2  # a gap is being filled from the events stream; live events buffered


_seq_of = seq_of  # the wire format lives in common/wire.py


def job_user_from_hash(bridge: Bridge) -> JobUser:
    """The default owner lookup: the ``user`` field of the job hash (None when absent);
    raises :class:`UnknownJob` when the job does not exist."""

    async def job_user(job_id: str) -> str | None:
        job_key_id, user = await bridge.client.hmget(bridge.keys.job(job_id), ["id", "user"])
        if job_key_id is None:
            raise UnknownJob(job_id)
        return user.decode() if user else None

    return job_user


def _error(message: str, job_id: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "message": message}
    if job_id is not None:
        body["jobId"] = job_id
    return orjson.dumps(body).decode()


class _Connection:
    """One WebSocket: a bounded outgoing queue drained by its own sender task."""

    __slots__ = (
        "_abort_handle",
        "_expiry",
        "_room",
        "_send",
        "_wake",
        "close_code",
        "close_reason",
        "closing",
        "limit",
        "on_close",
        "principal",
        "queue",
        "sender",
        "subs",
        "verify",
        "ws",
    )

    def __init__(self, ws: WebSocket, principal: Principal, limit: int,
                 on_close: Callable[[_Connection], None]) -> None:
        self.ws = ws
        self.on_close = on_close
        self.principal = principal
        self.limit = limit
        self.queue: deque[str] = deque()
        self.subs: dict[str, _Sub] = {}
        self.closing = False
        self.close_code = 0
        self.close_reason = ""
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self._abort_handle: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.verify: Verify | None = None
        self._send = ws.send

    def authorise(self, principal: Principal) -> None:
        """Serve ``principal`` until its token expires: one timer per connection, moved (not
        added) on each re-authentication, so an idle connection never wakes the loop."""
        self.principal = principal
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if principal.expires_at is not None:
            delay = principal.expires_at - time.time()
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self.close, CLOSE_UNAUTHORIZED, TOKEN_EXPIRED)

    def push(self, text: str) -> bool:
        """Queue one message without waiting. Returns False when the connection is closing
        (or starts closing now because the queue is full)."""
        if self.closing:
            return False
        queue = self.queue
        if len(queue) >= self.limit:
            self.close(CLOSE_TOO_SLOW, f"client too slow: {len(queue)} messages buffered")
            return False
        queue.append(text)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
        return True

    def close(self, code: int, reason: str) -> None:
        """Stop queueing, drop what is queued and let the sender send the close frame."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.queue.clear()
        for fut in (self._wake, self._room):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._wake = self._room = None
        self.on_close(self)

    async def wait_room(self) -> None:
        """Wait until at most half the queue is used (replays respect backpressure)."""
        while not self.closing and len(self.queue) > self.limit // 2:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    async def run_sender(self, close_timeout_s: float) -> None:
        send = self._send
        queue = self.queue
        loop = asyncio.get_running_loop()
        half = self.limit // 2
        try:
            while True:
                while queue:
                    await send({"type": "websocket.send", "text": queue.popleft()})
                    room = self._room
                    if room is not None and len(queue) <= half:
                        self._room = None
                        if not room.done():
                            room.set_result(None)
                if self.closing:
                    break
                self._wake = loop.create_future()
                await self._wake
            # A client that stopped reading may never let the close frame out: give up on it
            # after close_timeout_s (abort the transport where the server exposes it).
            self._abort_handle = loop.call_later(close_timeout_s, self._abort)
            if self.ws.application_state is WebSocketState.CONNECTED:
                await self.ws.close(self.close_code, self.close_reason)
        except Exception:
            self.closing = True
        finally:
            if self._abort_handle is not None:
                self._abort_handle.cancel()

    def _abort(self) -> None:
        """Hard close of a peer that never reads, so its close frame cannot get out.

        ASGI has no abort; the server's transport is found behind the ASGI ``send`` (a bound
        method of uvicorn's protocol, possibly wrapped in Starlette closures). Best effort:
        where it is not found, the sender stops and the connection ends with the server."""
        transport = _transport_of(self.ws._send)
        if transport is not None:
            transport.abort()  # uvicorn then reports a disconnect, which ends serve()
        if self.sender is not None:
            self.sender.cancel()


def _transport_of(send: Any, depth: int = 4) -> Any:
    owner = getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        return transport
    if depth:
        for cell in getattr(send, "__closure__", None) or ():
            with contextlib.suppress(ValueError):
                if callable(cell.cell_contents):
                    found = _transport_of(cell.cell_contents, depth - 1)
                    if found is not None:
                        return found
    return None


class _Sub:
    """One (connection, job) subscription."""

    __slots__ = ("conn", "job_id", "last", "overflowed", "pending", "state")

    def __init__(self, conn: _Connection, job_id: str) -> None:
        self.conn = conn
        self.job_id = job_id
        self.last = 0
        self.state = _SYNCING
        self.pending: list[tuple[int, str]] = []
        self.overflowed = False  # pending was dropped: refill from the stream


class _Channel:
    """The subscriptions of one job in this hub."""

    __slots__ = ("filler", "job_id", "prefix", "subs")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.prefix = b'{"type":"update","jobId":' + orjson.dumps(job_id) + b',"seq":'
        self.subs: dict[int, _Sub] = {}  # id(conn) -> sub
        self.filler: asyncio.Task[None] | None = None

    def update(self, seq: int, event: bytes) -> str:
        return (self.prefix + str(seq).encode() + b',"event":' + event + b"}").decode()


class Hub:
    """Fans job events out to WebSocket clients from one Redis Pub/Sub subscription.

    :param bridge: a connected :class:`~dualplane.common.bridge.Bridge`; the hub reads job
        snapshots and event streams through it and opens one extra connection of its own
        (same URL) for the subscription.
    :param job_user: ``async (job_id) -> owner`` used for access checks: the job's owner
        user id, or None for a job without owner (visible only to admin/orchestrator). It
        raises :class:`~dualplane.common.errors.UnknownJob` for a job that does not exist.
        Default: the ``user`` field of the job hash (:func:`job_user_from_hash`).
    :param buffer_messages: per-connection outgoing queue bound; a message that would
        overflow it closes the connection with 4008.
    :param close_timeout_s: how long a closing connection may take to let its close frame out
        before its transport is aborted (a peer that stopped reading).
    :param reconnect_backoff_s: first delay before re-subscribing after the hub's Redis
        connection dropped (doubles up to 2 s).
    :param max_concurrent_reads: Redis reads (access checks, snapshots, replays, gap fills)
        in flight at once; the rest wait (a burst of subscriptions must not exhaust the pool).
    :param max_waits_per_user: ``?wait=`` requests one user may hold at once (:attr:`waits`,
        resolved from this hub's subscription).
    """

    def __init__(
        self,
        bridge: Bridge,
        *,
        job_user: JobUser | None = None,
        buffer_messages: int = 1000,
        close_timeout_s: float = 10.0,
        reconnect_backoff_s: float = 0.05,
        max_concurrent_reads: int = 32,
        max_waits_per_user: int = 32,
    ) -> None:
        if buffer_messages < 2:
            raise ValueError("buffer_messages must be at least 2")
        self.bridge = bridge
        self.job_user = job_user or job_user_from_hash(bridge)
        self.buffer_messages = buffer_messages
        self.close_timeout_s = close_timeout_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self._patterns = [bridge.keys.channel_pattern(kind) for kind in EVENT_KINDS]
        self._channels: dict[str, _Channel] = {}
        self._connections: set[_Connection] = set()
        self._reader: asyncio.Task[None] | None = None
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._subscribed = asyncio.Event()
        #: Bounds the hub's concurrent reads (the bridge's pool has a connection limit).
        self._reads = asyncio.Semaphore(max_concurrent_reads)
        self._stopping = False
        #: ``?wait=`` requests, woken by the events this hub receives anyway.
        self.waits = FinishWaits(self._job_status, max_per_user=max_waits_per_user)
        #: Counters for tests and metrics.
        self.stats = {"published": 0, "delivered": 0, "duplicates": 0, "gaps": 0, "fills": 0,
                      "slow_closed": 0, "resubscribes": 0}

    async def _job_status(self, job_id: str) -> str | None:
        async with self._reads:
            (status,) = await self.bridge.job_fields(job_id, "status")
        return status  # type: ignore[return-value]

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (one PSUBSCRIBE for the three kinds) and start the reader task; returns
        once the subscription is active."""
        if self._reader is not None:
            return
        pool = self.bridge.client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # Our own connection without redis-py's silent retry: a drop must be seen, because
        # messages published meanwhile are lost and have to be refilled from the streams.
        kwargs.update(retry=Retry(NoBackoff(), 0), retry_on_error=[], socket_timeout=None,
                      health_check_interval=0)
        self._redis = aioredis.Redis(connection_pool=aioredis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=2, **kwargs))
        self._stopping = False
        self._reader = asyncio.create_task(self._read_loop(), name="hub-reader")
        waiter = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait({waiter, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            await self._reader  # raises what stopped it

    async def stop(self) -> None:
        """Close every connection (1012, service restart) and the subscription."""
        self._stopping = True
        for conn in list(self._connections):
            conn.close(CLOSE_RESTART, "service restart")
        senders = [c.sender for c in self._connections if c.sender is not None]
        if senders:
            await asyncio.wait(senders, timeout=2.0)
        tasks = [t for t in (self._reader, *(c.filler for c in self._channels.values())) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reader = None
        await self._close_pubsub()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def subscribers(self, job_id: str) -> int:
        """How many connections of this hub follow ``job_id`` (introspection, tests)."""
        channel = self._channels.get(job_id)
        return len(channel.subs) if channel else 0

    @property
    def connections(self) -> int:
        return len(self._connections)

    # -- Redis side -------------------------------------------------------------------

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read_loop(self) -> None:
        backoff = self.reconnect_backoff_s
        first = True
        while not self._stopping:
            try:
                assert self._redis is not None
                self._pubsub = self._redis.pubsub()
                await self._pubsub.psubscribe(*self._patterns)
                confirmed = 0
                while confirmed < len(self._patterns):  # the subscription is active from here
                    message = await self._pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        confirmed += 1
                    elif message["type"] == "pmessage":
                        self._on_message(message["channel"], message["data"])
                backoff = self.reconnect_backoff_s
                if not first:
                    self.stats["resubscribes"] += 1
                    self._resync_all()  # whatever was published while we were away
                first = False
                self._subscribed.set()
                await self._pump()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if first and not self._subscribed.is_set() and backoff >= 1.0:
                    raise
                if isinstance(exc, (redis.RedisError, OSError)):
                    log.warning("hub subscription lost (%s); re-subscribing in %.2fs", exc, backoff)
                else:
                    log.exception("hub reader failed; re-subscribing in %.2fs", backoff)
                await self._close_pubsub()
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    async def _pump(self) -> None:
        """Read published events and dispatch them (the hot loop)."""
        pubsub = self._pubsub
        read = pubsub.connection.read_response
        on_message = self._on_message
        while True:
            response = await read(timeout=math.inf, push_request=True)
            # [b"pmessage", pattern, channel, data] (a list subclass with hiredis)
            if isinstance(response, list) and len(response) == 4 and response[0] == b"pmessage":
                on_message(response[2], response[3])

    def _on_message(self, channel: bytes, data: bytes) -> None:
        self.stats["published"] += 1
        job_id = Keys.job_id_of_channel(channel.decode())
        if job_id in self.waits:
            self.waits.saw(job_id, data)
        chan = self._channels.get(job_id)
        if chan is None or not chan.subs:
            return
        try:
            seq = _seq_of(data)
        except (ValueError, KeyError, orjson.JSONDecodeError):
            log.warning("hub: unparsable event on %r", channel)
            return
        text = chan.update(seq, data)
        delivered = 0
        need_fill = False
        for sub in chan.subs.values():
            if sub.state == _LIVE:
                last = sub.last
                if seq == last + 1:
                    if sub.conn.push(text):
                        sub.last = seq
                        delivered += 1
                elif seq <= last:
                    self.stats["duplicates"] += 1
                else:
                    self.stats["gaps"] += 1
                    sub.state = _FILLING
                    sub.pending.append((seq, text))
                    need_fill = True
            else:
                self._buffer(sub, seq, text)
        self.stats["delivered"] += delivered
        if need_fill:
            self._ensure_fill(chan)

    def _buffer(self, sub: _Sub, seq: int, text: str) -> None:
        """Hold a live event while the subscription syncs; the stream can replace the buffer."""
        if sub.overflowed:
            return
        if len(sub.pending) >= self.buffer_messages:
            sub.pending.clear()
            sub.overflowed = True
            return
        sub.pending.append((seq, text))

    def _resync_all(self) -> None:
        """After a re-subscribe: every live subscription refills from its job's stream, and
        every ``?wait=`` looks at its job's status."""
        self.waits.recheck()
        for chan in self._channels.values():
            for sub in chan.subs.values():
                if sub.state == _LIVE:
                    sub.state = _FILLING
            if chan.subs:
                self._ensure_fill(chan)

    def _ensure_fill(self, chan: _Channel) -> None:
        if chan.filler is None or chan.filler.done():
            chan.filler = asyncio.create_task(self._fill(chan), name=f"hub-fill-{chan.job_id}")

    async def _fill(self, chan: _Channel) -> None:
        """Fill the gaps of the channel's FILLING subscriptions from the events stream: one
        XRANGE from the smallest last seq, serialized once, shared by all of them."""
        backoff = self.reconnect_backoff_s
        stalled: set[int] = set()
        while True:
            subs = [s for s in chan.subs.values() if s.state == _FILLING]
            if not subs:
                return
            since = min(s.last for s in subs)
            self.stats["fills"] += 1
            try:
                async with self._reads:
                    raws = await self.bridge.raw_events(chan.job_id, since)
            except (redis.RedisError, OSError) as exc:
                log.warning("hub: cannot read events of %s (%s); retrying", chan.job_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            updates = [(seq, chan.update(seq, raw)) for raw in raws for seq in (_seq_of(raw),)]
            for sub in subs:
                if sub.state != _FILLING or chan.subs.get(id(sub.conn)) is not sub:
                    continue
                before = sub.last
                for seq, text in updates:
                    if seq > sub.last:
                        if not sub.conn.push(text):
                            break
                        sub.last = seq
                self.stats["delivered"] += sub.last - before
                # A gap the stream cannot fill (the job expired): accept it rather than spin.
                accept_gap = sub.last == before and id(sub) in stalled
                if self._drain(sub, accept_gap=accept_gap):
                    stalled.discard(id(sub))
                elif sub.last == before:
                    stalled.add(id(sub))

    def _drain(self, sub: _Sub, *, accept_gap: bool = False) -> bool:
        """Deliver the buffered live events that follow ``sub.last``; go LIVE if nothing is
        missing, else stay FILLING (the caller makes sure a fill runs)."""
        if sub.overflowed:
            sub.overflowed = False
            sub.pending.clear()
            sub.state = _FILLING
            return False
        pending = sorted(sub.pending, key=lambda item: item[0]) if sub.pending else ()
        for i, (seq, text) in enumerate(pending):
            if seq <= sub.last:
                continue
            if seq != sub.last + 1 and not accept_gap:
                sub.pending = pending[i:]
                sub.state = _FILLING
                return False
            if not sub.conn.push(text):
                break
            sub.last = seq
            self.stats["delivered"] += 1
        sub.pending = []
        sub.state = _LIVE
        return True

    # -- WebSocket side ---------------------------------------------------------------

    async def serve(self, websocket: WebSocket, principal: Principal, *, verify: Verify | None = None) -> None:
        """Run one connection (accepting it if needed) until it closes. ``verify`` checks the
        tokens of ``auth`` messages; without it they are refused (an error message)."""
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        conn = _Connection(websocket, principal, self.buffer_messages, self._on_close)
        conn.verify = verify
        if self._stopping:
            await websocket.close(CLOSE_RESTART, "service restart")
            return
        self._connections.add(conn)
        conn.authorise(principal)
        conn.sender = asyncio.create_task(conn.run_sender(self.close_timeout_s), name="hub-sender")
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if conn.closing:
                    continue
                text = message.get("text")
                if text is None:
                    raw = message.get("bytes") or b""
                    text = raw.decode("utf-8", "replace")
                await self._handle(conn, text)
        except Exception as exc:
            log.warning("hub connection ended: %r", exc)
        finally:
            self._drop(conn)
            conn.close(1000, "")
            if conn.sender is not None and not conn.sender.done():
                conn.sender.cancel()
                await asyncio.gather(conn.sender, return_exceptions=True)

    def _on_close(self, conn: _Connection) -> None:
        """A connection started closing: it gets nothing more; its subscriptions go away
        right after the current dispatch (which may be iterating them)."""
        if conn.close_code == CLOSE_TOO_SLOW:
            self.stats["slow_closed"] += 1
            log.warning("hub: closing a slow client (%s)", conn.close_reason)
        asyncio.get_running_loop().call_soon(self._drop, conn)

    def _drop(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        for job_id in list(conn.subs):
            self._unsubscribe(conn, job_id)

    def _unsubscribe(self, conn: _Connection, job_id: str) -> None:
        sub = conn.subs.pop(job_id, None)
        if sub is None:
            return
        chan = self._channels.get(job_id)
        if chan is not None and chan.subs.get(id(conn)) is sub:
            del chan.subs[id(conn)]
            if not chan.subs:
                del self._channels[job_id]
                if chan.filler is not None:
                    chan.filler.cancel()

    async def _handle(self, conn: _Connection, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.push(_error("invalid JSON"))
            return
        if not isinstance(message, dict):
            conn.push(_error("a message must be a JSON object"))
            return
        kind = message.get("type")
        if kind == "ping":
            conn.push(_PONG)
            return
        if kind == "auth":
            self._reauthenticate(conn, message.get("token"))
            return
        if kind not in ("subscribe", "unsubscribe"):
            conn.push(_error(f"unknown message type {kind!r}" if isinstance(kind, str) else "missing type"))
            return
        job_id = message.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            conn.push(_error(f"{kind} needs a jobId"))
            return
        if kind == "unsubscribe":
            self._unsubscribe(conn, job_id)
            conn.push(orjson.dumps({"type": "unsubscribed", "jobId": job_id}).decode())
            return
        since = message.get("since")
        if since is not None and (type(since) is not int or not 0 <= since <= MAX_SEQ):
            conn.push(_error("since must be an integer from 0 to 2^53", job_id))
            return
        try:
            await self._subscribe(conn, job_id, since)
        except (redis.RedisError, OSError) as exc:
            log.warning("hub: subscribe to %s failed: %s", job_id, exc)
            if conn.subs.get(job_id) is not None:
                self._unsubscribe(conn, job_id)
            conn.push(_error("temporarily unavailable, subscribe again", job_id))

    def _reauthenticate(self, conn: _Connection, token: Any) -> None:
        """Swap in a fresh token of the same principal, or close the connection (4401)."""
        if conn.verify is None:
            conn.push(_error("auth is not available here"))
            return
        if not isinstance(token, str) or not token:
            conn.push(_error("auth needs a token"))
            return
        try:
            principal = conn.verify(token)
        except AuthError as exc:
            conn.close(CLOSE_UNAUTHORIZED, _close_reason(str(exc)))
            return
        current = conn.principal
        if (principal.user, principal.role) != (current.user, current.role):
            conn.close(CLOSE_UNAUTHORIZED, "auth must keep the same user and role")
            return
        conn.authorise(principal)
        conn.push(orjson.dumps({"type": "authenticated", "exp": principal.expires_at}).decode())

    async def _subscribe(self, conn: _Connection, job_id: str, since: int | None) -> None:
        if not valid_job_id(job_id):
            conn.push(_error(NO_SUCH_JOB, job_id))
            return
        try:
            async with self._reads:
                owner = await self.job_user(job_id)
        except UnknownJob:
            owner = False
        if owner is False or not conn.principal.can_access(owner):
            conn.push(_error(NO_SUCH_JOB, job_id))
            return
        # Register before reading the snapshot: live events are buffered meanwhile.
        self._unsubscribe(conn, job_id)
        sub = _Sub(conn, job_id)
        conn.subs[job_id] = sub
        chan = self._channels.get(job_id)
        if chan is None:
            chan = self._channels[job_id] = _Channel(job_id)
        chan.subs[id(conn)] = sub
        try:
            async with self._reads:
                job = await self.bridge.get_job(job_id)
        except UnknownJob:
            self._unsubscribe(conn, job_id)
            conn.push(_error(NO_SUCH_JOB, job_id))
            return
        if conn.subs.get(job_id) is not sub:  # unsubscribed or closed meanwhile
            return
        snapshot_seq = job.seq
        job_json = job.model_dump_json()
        conn.push(f'{{"type":"snapshot","jobId":{orjson.dumps(job_id).decode()},"seq":{snapshot_seq},"job":{job_json}}}')
        last = snapshot_seq
        if since is not None and since < snapshot_seq:
            last = await self._replay(conn, chan, since, snapshot_seq)
            if conn.subs.get(job_id) is not sub:
                return
        sub.last = last
        if not self._drain(sub):
            self._ensure_fill(chan)

    async def _replay(self, conn: _Connection, chan: _Channel, since: int, upto: int) -> int:
        """Send events ``(since, upto]`` from the stream in pages, waiting for queue room so a
        long replay is not mistaken for a slow client. Returns the last seq sent."""
        page = max(1, min(500, self.buffer_messages // 2))
        key = self.bridge.keys.events(chan.job_id)
        last = since
        while last < upto and not conn.closing:
            async with self._reads:
                entries = await self.bridge.client.xrange(key, min=f"{last + 1}-0", max=f"{upto}-0", count=page)
            if not entries:
                return upto  # trimmed or expired: nothing more to send
            for _, fields in entries:
                raw = fields[b"e"]
                seq = _seq_of(raw)
                conn.push(chan.update(seq, raw))
                last = seq
            await conn.wait_room()
        return max(last, upto) if not conn.closing else last


def _token_of(websocket: WebSocket) -> str:
    token = websocket.query_params.get("token")
    if token:
        return token
    authorization = websocket.headers.get("authorization")
    if not authorization:
        raise AuthError("missing token (?token=<jwt> or Authorization: Bearer <jwt>)")
    return bearer_token(authorization)


def _close_reason(text: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    data = text.encode()[:123]
    return data.decode("utf-8", "ignore")


def add_websocket_route(app: FastAPI, hub: Hub, authenticator: Authenticator, path: str = "/ws") -> None:
    """Mount the hub at ``path``. Authentication: ``?token=<jwt>`` (browsers cannot set
    headers on a WebSocket) or ``Authorization: Bearer <jwt>``. A missing, invalid or expired
    token is accepted and then closed with 4401 and a reason naming the problem."""

    @app.websocket(path)
    async def websocket_endpoint(websocket: WebSocket) -> None:
        try:
            principal = await authenticator.authenticate(_token_of(websocket))
        except AuthError as exc:
            await websocket.accept()
            await websocket.close(CLOSE_UNAUTHORIZED, _close_reason(str(exc)))
            return
        await hub.serve(websocket, principal, verify=authenticator.verify)
