"""The hub's sequence state: exactly-once, in-order delivery per (connection, job) subscription.

Each :class:`Sub` remembers the last seq it delivered and is in one of three states:

* ``SYNCING`` — its snapshot (and replay) is being read: live events are buffered in ``pending``;
* ``LIVE`` — an event with seq ``last + 1`` goes straight to the connection, one at or below
  ``last`` is a duplicate and dropped, one further ahead is a gap: the sub turns ``FILLING``;
* ``FILLING`` — the missing events are being read from the job's events stream (one read per
  :class:`Channel`, shared by its filling subs); live events are buffered meanwhile.

A sub leaves SYNCING or FILLING through :meth:`Sequencer.drain`, which delivers what it
buffered and goes LIVE only when nothing is missing. A buffer that would overflow is dropped
and refilled from the stream instead. Nothing here reads Redis or waits: the hub feeds in
published events (:meth:`Sequencer.live`) and stream reads (:meth:`Sequencer.fill`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from dualplane.control_plane.hub.transport import text_frame

if TYPE_CHECKING:
    import asyncio

    from dualplane.control_plane.hub.transport import Connection

SYNCING = 0  # snapshot/replay in progress: live events are buffered in ``pending``
LIVE = 1  # delivering: seq == last + 1 goes straight to the connection
FILLING = 2  # a gap is being filled from the events stream; live events buffered


class Sub:
    """One (connection, job) subscription."""

    __slots__ = ("conn", "job_id", "last", "overflowed", "pending", "state")

    def __init__(self, conn: Connection, job_id: str) -> None:
        self.conn = conn
        self.job_id = job_id
        self.last = 0
        self.state = SYNCING
        self.pending: list[tuple[int, bytes]] = []
        self.overflowed = False  # pending was dropped: refill from the stream


class Channel:
    """The subscriptions of one job in this hub."""

    __slots__ = ("filler", "job_id", "prefix", "subs")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.prefix = b'{"type":"update","jobId":' + orjson.dumps(job_id) + b',"seq":'
        self.subs: dict[int, Sub] = {}  # id(conn) -> sub
        self.filler: asyncio.Task[None] | None = None  # the hub's gap fill, while one runs

    def update(self, seq: int, event: bytes) -> bytes:
        """The ``update`` frame of an event (events are the bridge's JSON: UTF-8), built once for
        every subscriber."""
        return text_frame(self.prefix + str(seq).encode() + b',"event":' + event + b"}")

    def filling(self) -> list[Sub]:
        return [s for s in self.subs.values() if s.state == FILLING]


class Sequencer:
    """The transitions of every subscription of a hub.

    :param buffer_messages: live events one syncing or filling sub may buffer.
    :param stats: the hub's counters (``delivered``, ``duplicates``, ``gaps`` are counted here).
    """

    def __init__(self, buffer_messages: int, stats: dict[str, int]) -> None:
        self.buffer_messages = buffer_messages
        self.stats = stats

    def live(self, chan: Channel, seq: int, frame: bytes) -> bool:
        """A published event of ``chan``'s job; True when a sub found a gap (a fill must run)."""
        delivered = 0
        need_fill = False
        for sub in chan.subs.values():
            if sub.state == LIVE:
                last = sub.last
                if seq == last + 1:
                    if sub.conn.push(frame):
                        sub.last = seq
                        delivered += 1
                elif seq <= last:
                    self.stats["duplicates"] += 1
                else:
                    self.stats["gaps"] += 1
                    sub.state = FILLING
                    sub.pending.append((seq, frame))
                    need_fill = True
            else:
                self._buffer(sub, seq, frame)
        self.stats["delivered"] += delivered
        return need_fill

    def _buffer(self, sub: Sub, seq: int, frame: bytes) -> None:
        """Hold a live event while the subscription syncs; the stream can replace the buffer."""
        if sub.overflowed:
            return
        if len(sub.pending) >= self.buffer_messages:
            sub.pending.clear()
            sub.overflowed = True
            return
        sub.pending.append((seq, frame))

    @staticmethod
    def resync(chan: Channel) -> bool:
        """After a re-subscribe (events may have gone by unseen): every LIVE sub refills from the
        stream. True when the channel has subs (a fill must run)."""
        for sub in chan.subs.values():
            if sub.state == LIVE:
                sub.state = FILLING
        return bool(chan.subs)

    def fill(self, chan: Channel, subs: list[Sub], updates: list[tuple[int, bytes]], stalled: set[int]) -> None:
        """Deliver what one stream read returned to the FILLING ``subs`` that are still
        subscribed; ``stalled`` (ids of subs a read did not move) persists across the reads of
        one fill, so a gap the stream cannot fill (the job expired) is accepted, not spun on."""
        for sub in subs:
            if sub.state != FILLING or chan.subs.get(id(sub.conn)) is not sub:
                continue
            before = sub.last
            for seq, frame in updates:
                if seq > sub.last:
                    if not sub.conn.push(frame):
                        break
                    sub.last = seq
            self.stats["delivered"] += sub.last - before
            accept_gap = sub.last == before and id(sub) in stalled
            if self.drain(sub, accept_gap=accept_gap):
                stalled.discard(id(sub))
            elif sub.last == before:
                stalled.add(id(sub))

    def drain(self, sub: Sub, *, accept_gap: bool = False) -> bool:
        """Deliver the buffered live events that follow ``sub.last``; go LIVE if nothing is
        missing, else stay FILLING (the caller makes sure a fill runs)."""
        if sub.overflowed:
            sub.overflowed = False
            sub.pending.clear()
            sub.state = FILLING
            return False
        pending = sorted(sub.pending, key=lambda item: item[0]) if sub.pending else []
        for i, (seq, frame) in enumerate(pending):
            if seq <= sub.last:
                continue
            if seq != sub.last + 1 and not accept_gap:
                sub.pending = pending[i:]
                sub.state = FILLING
                return False
            if not sub.conn.push(frame):
                break
            sub.last = seq
            self.stats["delivered"] += 1
        sub.pending = []
        sub.state = LIVE
        return True
