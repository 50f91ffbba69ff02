"""The hub's Redis side: ONE pattern subscription to every job's event channels, and the reads
of job snapshots and event streams.

The subscription runs on a connection of its own, without redis-py's silent retry: a drop must
be seen, because what was published meanwhile is lost. The reader re-subscribes with a backoff
and then calls ``on_resubscribed``, so that the hub refills every subscription from the streams.
Reads (owners, snapshots, replays, gap fills, statuses) share one semaphore: a burst of
subscriptions must not exhaust the bridge's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dualplane.common.bridge import Bridge
from dualplane.common.errors import UnknownJob
from dualplane.common.models import Job
from dualplane.common.wire import EVENT_FIELD, stream_id

log = logging.getLogger("dualplane.hub")

EVENT_KINDS = ("status", "progress", "data", "audit")

JobUser = Callable[[str], Awaitable[str | None]]


def job_user_from_hash(bridge: Bridge) -> JobUser:
    """The default owner lookup: the ``user`` field of the job hash (None when absent);
    raises :class:`UnknownJob` when the job does not exist."""

    async def job_user(job_id: str) -> str | None:
        job_key_id, user = await bridge.client.hmget(bridge.keys.job(job_id), ["id", "user"])
        if job_key_id is None:
            raise UnknownJob(job_id)
        if not user:
            return None
        return user.decode() if isinstance(user, bytes) else user

    return job_user


class Feed:
    """:param bridge: a connected bridge: its pool's settings make the subscription's connection.
    :param on_message: ``(channel, data)`` for every published event (called in the reader task).
    :param on_resubscribed: called once a dropped subscription is active again.
    :param job_user: the owner lookup (see :class:`~dualplane.control_plane.hub.hub.Hub`).
    :param reconnect_backoff_s: first delay before re-subscribing (doubles up to 2 s).
    :param max_concurrent_reads: reads in flight at once.
    :param stats: the hub's counters (``resubscribes`` is counted here).
    """

    def __init__(self, bridge: Bridge, *, on_message: Callable[[bytes, bytes], None],
                 on_resubscribed: Callable[[], None], job_user: JobUser, reconnect_backoff_s: float,
                 max_concurrent_reads: int, stats: dict[str, int]) -> None:
        self.bridge = bridge
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.job_user = job_user
        self.reconnect_backoff_s = reconnect_backoff_s
        self.stats = stats
        self._patterns = [bridge.keys.channel_pattern(kind) for kind in EVENT_KINDS]
        self._reader: asyncio.Task[None] | None = None
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._subscribed = asyncio.Event()
        #: Bounds the concurrent reads (the bridge's pool has a connection limit).
        self._reads = asyncio.Semaphore(max_concurrent_reads)
        #: Set when the hub stops: a dropped subscription is not renewed any more.
        self.stopping = False

    # -- the subscription ---------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (one PSUBSCRIBE for every kind) and start the reader task; returns
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
        self.stopping = False
        self._reader = asyncio.create_task(self._read_loop(), name="hub-reader")
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
        await self._close_pubsub()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read_loop(self) -> None:
        backoff = self.reconnect_backoff_s
        first = True
        while not self.stopping:
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
                        self.on_message(message["channel"], message["data"])
                backoff = self.reconnect_backoff_s
                if not first:
                    self.stats["resubscribes"] += 1
                    self.on_resubscribed()  # whatever was published while we were away
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
        on_message = self.on_message
        while True:
            response = await read(timeout=math.inf, push_request=True)
            # [b"pmessage", pattern, channel, data] (a list subclass with hiredis)
            if isinstance(response, list) and len(response) == 4 and response[0] == b"pmessage":
                on_message(response[2], response[3])

    # -- reads --------------------------------------------------------------------------

    async def owner(self, job_id: str) -> str | None:
        """The job's owner (None: no owner); raises :class:`UnknownJob`."""
        async with self._reads:
            return await self.job_user(job_id)

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
            entries = await self.bridge.client.xrange(self.bridge.keys.events(job_id), min=stream_id(after + 1),
                                                      max=stream_id(upto), count=count)
        # the bridge's client does not decode replies: ids and fields are bytes
        return [fields[EVENT_FIELD] for _, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)]

    async def status(self, job_id: str) -> str | None:
        """The job's status (None: the job is gone)."""
        async with self._reads:
            (status,) = await self.bridge.job_fields(job_id, "status")
        return status  # type: ignore[return-value]
