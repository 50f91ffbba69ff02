"""The hub's Redis side: its subscription to job events, and the reads of job owners, snapshots
and event streams, all through the bridge.

The subscription is the bridge's to choose: on one Redis ONE pattern subscription to every job's
event channels (:class:`~dualplane.common.bridge.subscriptions.EventSubscription`, where
:meth:`Feed.follow` costs nothing); on a cluster a sharded subscription to each job the hub's
clients and waits follow (:class:`~dualplane.common.bridge.subscriptions.ShardedEventSubscription`),
so a replica receives its own clients' events and no others. Either one sees a drop:
the reader re-subscribes with a backoff and then calls ``on_resubscribed``, so that the hub
refills every subscription from the streams. Reads (owners, snapshots, replays, gap fills,
statuses) share one semaphore: a burst of subscriptions must not exhaust the bridge's pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dualplane.common.bridge import Bridge
from dualplane.common.bridge.subscriptions import EventSubscription, ShardedEventSubscription
from dualplane.common.errors import BridgeError
from dualplane.common.models import Job

log = logging.getLogger("dualplane.hub")

EVENT_KINDS = ("status", "progress", "data", "audit")


class Feed:
    """:param bridge: a connected bridge: its pool's settings make the subscription's connection.
    :param on_message: ``(channel, data)`` for every published event (called in the reader task).
    :param on_resubscribed: called once a dropped subscription is active again.
    :param reconnect_backoff_s: first delay before re-subscribing (doubles up to 2 s).
    :param max_concurrent_reads: reads in flight at once.
    :param stats: the hub's counters (``resubscribes`` is counted here).
    """

    def __init__(self, bridge: Bridge, *, on_message: Callable[[bytes, bytes], None],
                 on_resubscribed: Callable[[], None], reconnect_backoff_s: float,
                 max_concurrent_reads: int, stats: dict[str, int]) -> None:
        self.bridge = bridge
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.reconnect_backoff_s = reconnect_backoff_s
        self.stats = stats
        self._reader: asyncio.Task[None] | None = None
        self._subscription: EventSubscription | ShardedEventSubscription | None = None
        self._subscribed = asyncio.Event()
        #: Bounds the concurrent reads (the bridge's pool has a connection limit).
        self._reads = asyncio.Semaphore(max_concurrent_reads)
        #: Set when the hub stops: a dropped subscription is not renewed any more.
        self.stopping = False

    # -- the subscription ---------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start the reader task; returns once the subscription is active."""
        if self._reader is not None:
            return
        self._subscription = self.bridge.event_subscription(EVENT_KINDS)
        self.stopping = False
        self._reader = asyncio.create_task(self._read_loop(self._subscription), name="hub-reader")
        waiter = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait({waiter, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            await self._reader  # raises what stopped it

    async def stop(self) -> None:
        """Stop the reader and close the subscription and its connection."""
        self.stopping = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._reader = None
        if self._subscription is not None:
            await self._subscription.aclose()
            self._subscription = None

    async def follow(self, job_id: str) -> None:
        """Receive ``job_id``'s events from now on (counted: call :meth:`unfollow` once for each
        call, even one that raised); returns once the subscription covers it, so a read made after it misses nothing
        (an event published in between is received)."""
        if self._subscription is not None:
            await self._subscription.follow(job_id)

    def unfollow(self, job_id: str) -> None:
        if self._subscription is not None:
            self._subscription.unfollow(job_id)

    async def _read_loop(self, subscription: EventSubscription | ShardedEventSubscription) -> None:
        backoff = self.reconnect_backoff_s
        first = True
        while not self.stopping:
            try:
                await subscription.subscribe(self.on_message)
                backoff = self.reconnect_backoff_s
                if not first:
                    self.stats["resubscribes"] += 1
                    self.on_resubscribed()  # whatever was published while we were away
                first = False
                self._subscribed.set()
                await subscription.pump(self.on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if first and not self._subscribed.is_set() and backoff >= 1.0:
                    raise
                if isinstance(exc, (BridgeError, OSError)):
                    log.warning("hub subscription lost (%s); re-subscribing in %.2fs", exc, backoff)
                else:
                    log.exception("hub reader failed; re-subscribing in %.2fs", backoff)
                await subscription.unsubscribe()
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    # -- reads --------------------------------------------------------------------------

    async def owner(self, job_id: str) -> str | None:
        """The job's owner (None: no owner); raises :class:`UnknownJob`."""
        async with self._reads:
            return await self.bridge.job_owner(job_id)

    async def snapshot(self, job_id: str) -> Job:
        """The job as of now; raises :class:`UnknownJob`."""
        async with self._reads:
            return await self.bridge.get_job(job_id)

    async def events_after(self, job_id: str, since: int) -> list[bytes]:
        """Every stored event with seq > ``since`` (a gap fill)."""
        async with self._reads:
            return await self.bridge.raw_events(job_id, since)

    async def events_between(self, job_id: str, after: int, upto: int, count: int) -> list[bytes]:
        """At most ``count`` stored events with ``after`` < seq <= ``upto`` (a replay page)."""
        async with self._reads:
            return await self.bridge.raw_events(job_id, after, upto=upto, count=count)

    async def status(self, job_id: str) -> str | None:
        """The job's status (None: the job is gone)."""
        async with self._reads:
            (status,) = await self.bridge.job_fields(job_id, "status")
        return status  # type: ignore[return-value]
