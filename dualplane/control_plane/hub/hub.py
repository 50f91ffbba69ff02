"""The hub itself: wires the WebSocket side (:mod:`.transport`), the subscriptions' sequence
state (:mod:`.sequence`) and the Redis feed (:mod:`.feed`), and speaks the protocol of the
package docstring (subscribe: owner check, snapshot, replay; unsubscribe; auth; ping)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

import orjson
from starlette.websockets import WebSocket, WebSocketState

from dualplane.common.bridge import Bridge, Keys
from dualplane.common.errors import BridgeError, UnknownJob
from dualplane.common.wire import seq_of
from dualplane.control_plane.auth import AuthError, Principal
from dualplane.control_plane.hub.feed import Feed
from dualplane.control_plane.hub.sequence import Channel, Sequencer, Sub
from dualplane.control_plane.hub.transport import (
    CLOSE_RESTART,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    PONG,
    Connection,
    Flusher,
    Verify,
    clip_reason,
    error,
    text_frame,
)
from dualplane.control_plane.limits import MAX_SEQ, valid_job_id
from dualplane.control_plane.waits import FinishWaits

log = logging.getLogger("dualplane.hub")

NO_SUCH_JOB = "no such job"


class Hub:
    """Fans job events out to WebSocket clients from one Redis Pub/Sub subscription.

    :param bridge: a connected :class:`~dualplane.common.bridge.Bridge`; the hub reads job
        snapshots and event streams through it and opens one extra connection of its own
        (same URL) for the subscription.
        Access checks ask :meth:`~dualplane.common.bridge.Bridge.job_owner` (a job without
        owner is visible only to admin/orchestrator).
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
        buffer_messages: int = 1000,
        close_timeout_s: float = 10.0,
        reconnect_backoff_s: float = 0.05,
        max_concurrent_reads: int = 32,
        max_waits_per_user: int = 32,
    ) -> None:
        if buffer_messages < 2:
            raise ValueError("buffer_messages must be at least 2")
        self.bridge = bridge
        self.buffer_messages = buffer_messages
        self.close_timeout_s = close_timeout_s
        self.reconnect_backoff_s = reconnect_backoff_s
        #: Counters for tests and metrics.
        self.stats = {"published": 0, "delivered": 0, "duplicates": 0, "gaps": 0, "fills": 0,
                      "slow_closed": 0, "resubscribes": 0}
        self.feed = Feed(bridge, on_message=self._on_message, on_resubscribed=self._resync_all,
                         reconnect_backoff_s=reconnect_backoff_s,
                         max_concurrent_reads=max_concurrent_reads, stats=self.stats)
        self.sequence = Sequencer(buffer_messages, self.stats)
        self._channels: dict[str, Channel] = {}
        self._connections: set[Connection] = set()
        self._flusher = Flusher()
        self._stopping = False
        #: ``?wait=`` requests, woken by the events this hub receives anyway.
        self.waits = FinishWaits(self.feed.status, self.feed.follow, self.feed.unfollow,
                                 max_per_user=max_waits_per_user)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start the reader; returns once the subscription is active."""
        self._stopping = False
        await self.feed.start()

    async def stop(self) -> None:
        """Close every connection (1012, service restart) and the subscription."""
        self._stopping = self.feed.stopping = True
        for conn in list(self._connections):
            conn.close(CLOSE_RESTART, "service restart")
        senders = [c.sender for c in self._connections if c.sender is not None]
        if senders:
            await asyncio.wait(senders, timeout=2.0)
        fillers = [c.filler for c in self._channels.values() if c.filler is not None]
        for task in fillers:
            task.cancel()
        await asyncio.gather(*fillers, return_exceptions=True)
        await self.feed.stop()

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

    # -- from the feed ------------------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        """A published event (the hot path): wake its ``?wait=``s, deliver it to its job's subs."""
        self.stats["published"] += 1
        job_id = Keys.job_id_of_channel(channel.decode())
        if job_id in self.waits:
            self.waits.saw(job_id, data)
        chan = self._channels.get(job_id)
        if chan is None or not chan.subs:
            return
        try:
            seq = seq_of(data)
        except (ValueError, KeyError, orjson.JSONDecodeError):
            log.warning("hub: unparsable event on %r", channel)
            return
        if self.sequence.live(chan, seq, chan.update(seq, data)):
            self._ensure_fill(chan)

    def _resync_all(self) -> None:
        """After a re-subscribe: every live subscription refills from its job's stream, and
        every ``?wait=`` looks at its job's status."""
        self.waits.recheck()
        for chan in self._channels.values():
            if self.sequence.resync(chan):
                self._ensure_fill(chan)

    def _ensure_fill(self, chan: Channel) -> None:
        if chan.filler is None or chan.filler.done():
            chan.filler = asyncio.create_task(self._fill(chan), name=f"hub-fill-{chan.job_id}")

    async def _fill(self, chan: Channel) -> None:
        """Fill the gaps of the channel's FILLING subscriptions from the events stream: one
        read from the smallest last seq, serialized once, shared by all of them."""
        backoff = self.reconnect_backoff_s
        stalled: set[int] = set()
        while True:
            subs = chan.filling()
            if not subs:
                return
            since = min(s.last for s in subs)
            self.stats["fills"] += 1
            try:
                raws = await self.feed.events_after(chan.job_id, since)
            except (BridgeError, OSError) as exc:
                log.warning("hub: cannot read events of %s (%s); retrying", chan.job_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            updates = [(seq, chan.update(seq, raw)) for raw in raws for seq in (seq_of(raw),)]
            self.sequence.fill(chan, subs, updates, stalled)

    # -- WebSocket side ---------------------------------------------------------------

    async def serve(self, websocket: WebSocket, principal: Principal, *, verify: Verify | None = None) -> None:
        """Run one connection (accepting it if needed) until it closes. ``verify`` checks the
        tokens of ``auth`` messages; without it they are refused (an error message)."""
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        conn = Connection(websocket, principal, self.buffer_messages, self._on_close, self._flusher)
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

    def _on_close(self, conn: Connection) -> None:
        """A connection started closing: it gets nothing more; its subscriptions go away
        right after the current dispatch (which may be iterating them)."""
        if conn.close_code == CLOSE_TOO_SLOW:
            self.stats["slow_closed"] += 1
            log.warning("hub: closing a slow client (%s)", conn.close_reason)
        asyncio.get_running_loop().call_soon(self._drop, conn)

    def _drop(self, conn: Connection) -> None:
        self._connections.discard(conn)
        for job_id in list(conn.subs):
            self._unsubscribe(conn, job_id)

    def _unsubscribe(self, conn: Connection, job_id: str) -> None:
        sub = conn.subs.pop(job_id, None)
        if sub is None:
            return
        self.feed.unfollow(job_id)
        chan = self._channels.get(job_id)
        if chan is not None and chan.subs.get(id(conn)) is sub:
            del chan.subs[id(conn)]
            if not chan.subs:
                del self._channels[job_id]
                if chan.filler is not None:
                    chan.filler.cancel()

    async def _handle(self, conn: Connection, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.push(error("invalid JSON"))
            return
        if not isinstance(message, dict):
            conn.push(error("a message must be a JSON object"))
            return
        kind = message.get("type")
        if kind == "ping":
            conn.push(PONG)
            return
        if kind == "auth":
            self._reauthenticate(conn, message.get("token"))
            return
        if kind not in ("subscribe", "unsubscribe"):
            conn.push(error(f"unknown message type {kind!r}" if isinstance(kind, str) else "missing type"))
            return
        job_id = message.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            conn.push(error(f"{kind} needs a jobId"))
            return
        if kind == "unsubscribe":
            self._unsubscribe(conn, job_id)
            conn.push(text_frame(orjson.dumps({"type": "unsubscribed", "jobId": job_id})))
            return
        since = message.get("since")
        if since is not None and (type(since) is not int or not 0 <= since <= MAX_SEQ):
            conn.push(error("since must be an integer from 0 to 2^53", job_id))
            return
        try:
            await self._subscribe(conn, job_id, since)
        except (BridgeError, OSError) as exc:
            log.warning("hub: subscribe to %s failed: %s", job_id, exc)
            if conn.subs.get(job_id) is not None:
                self._unsubscribe(conn, job_id)
            conn.push(error("temporarily unavailable, subscribe again", job_id))

    def _reauthenticate(self, conn: Connection, token: Any) -> None:
        """Swap in a fresh token of the same principal, or close the connection (4401)."""
        if conn.verify is None:
            conn.push(error("auth is not available here"))
            return
        if not isinstance(token, str) or not token:
            conn.push(error("auth needs a token"))
            return
        try:
            principal = conn.verify(token)
        except AuthError as exc:
            conn.close(CLOSE_UNAUTHORIZED, clip_reason(str(exc)))
            return
        current = conn.principal
        if (principal.user, principal.role) != (current.user, current.role):
            conn.close(CLOSE_UNAUTHORIZED, "auth must keep the same user and role")
            return
        conn.authorise(principal)
        conn.push(text_frame(orjson.dumps({"type": "authenticated", "exp": principal.expires_at})))

    async def _subscribe(self, conn: Connection, job_id: str, since: int | None) -> None:
        if not valid_job_id(job_id):
            conn.push(error(NO_SUCH_JOB, job_id))
            return
        try:
            visible = conn.principal.can_access(await self.feed.owner(job_id))
        except UnknownJob:
            visible = False
        if not visible:
            conn.push(error(NO_SUCH_JOB, job_id))
            return
        # Register before reading the snapshot: live events are buffered meanwhile.
        self._unsubscribe(conn, job_id)
        sub = Sub(conn, job_id)
        conn.subs[job_id] = sub
        chan = self._channels.get(job_id)
        if chan is None:
            chan = self._channels[job_id] = Channel(job_id)
        chan.subs[id(conn)] = sub
        await self.feed.follow(job_id)  # from here on its events reach this hub (a cluster's sharded channel)
        try:
            job = await self.feed.snapshot(job_id)
        except UnknownJob:
            self._unsubscribe(conn, job_id)
            conn.push(error(NO_SUCH_JOB, job_id))
            return
        if conn.subs.get(job_id) is not sub:  # unsubscribed or closed meanwhile
            return
        snapshot_seq = job.seq
        job_json = job.model_dump_json()
        conn.push(text_frame(f'{{"type":"snapshot","jobId":{orjson.dumps(job_id).decode()},"seq":{snapshot_seq},'
                             f'"job":{job_json}}}'.encode()))
        last = snapshot_seq
        if since is not None and since < snapshot_seq:
            last = await self._replay(conn, chan, since, snapshot_seq)
            if conn.subs.get(job_id) is not sub:
                return
        sub.last = last
        if not self.sequence.drain(sub):
            self._ensure_fill(chan)

    async def _replay(self, conn: Connection, chan: Channel, since: int, upto: int) -> int:
        """Send events ``(since, upto]`` from the stream in pages, waiting for queue room so a
        long replay is not mistaken for a slow client. Returns the last seq sent."""
        page = max(1, min(500, self.buffer_messages // 2))
        last = since
        while last < upto and not conn.closing:
            raws = await self.feed.events_between(chan.job_id, last, upto, page)
            if not raws:
                return upto  # trimmed or expired: nothing more to send
            for raw in raws:
                seq = seq_of(raw)
                conn.push(chan.update(seq, raw))
                last = seq
            await conn.wait_room()
        return max(last, upto) if not conn.closing else last
