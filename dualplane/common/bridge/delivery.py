"""Delivery: the lane streams' consumer groups — read, reclaim, release, acknowledge, count."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.exceptions import ResponseError

from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.replies import text
from dualplane.common.errors import BridgeClosed

log = logging.getLogger("dualplane.bridge")


@dataclass(frozen=True)
class Message:
    """One stream entry delivered to a consumer."""

    stream: str
    id: str
    fields: dict[bytes, bytes]

    @property
    def raw(self) -> bytes | None:
        return self.fields.get(b"m")


@dataclass(frozen=True)
class LaneStream:
    """A lane stream as a metrics scrape sees it: its length, and its consumer groups as
    XINFO GROUPS describes them (field names as text; none while no consumer created one)."""

    stream: str
    length: int
    groups: list[dict[str, Any]]


class LaneReader:
    """A consumer's reads of one lane's partition streams. XREADGROUP's COUNT is per stream, so a
    read may bring more than asked: the rest waits here and goes first next time (it is pending
    to this consumer; one that waits past its lease is reclaimed by another, and then its stale
    claim here changes nothing). On a cluster, whose partitions are on different slots, each
    stream has a blocking read of its own in flight, and a read returns what the first of them
    to answer brought."""

    def __init__(self, ops: DeliveryOps, streams: Sequence[str], consumer: str) -> None:
        self._ops = ops
        self._streams = list(streams)
        self._consumer = consumer
        self._backlog: list[Message] = []
        self._reads: dict[str, asyncio.Task[list[Message]]] = {}

    async def read(self, *, count: int, block_ms: int | None) -> list[Message]:
        if not self._backlog:
            if self._ops.config.cluster and len(self._streams) > 1:
                self._backlog = await self._read_each(count, block_ms)
            else:
                self._backlog = await self._ops.read(self._streams, self._consumer, count=count, block_ms=block_ms)
        messages, self._backlog = self._backlog[:count], self._backlog[count:]
        return messages

    async def _read_each(self, count: int, block_ms: int | None) -> list[Message]:
        for stream in self._streams:
            if stream not in self._reads:
                self._reads[stream] = asyncio.ensure_future(
                    self._ops.read([stream], self._consumer, count=count, block_ms=block_ms))
        await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        messages: list[Message] = []
        failure: BaseException | None = None
        for stream, task in list(self._reads.items()):
            if task.done():
                del self._reads[stream]
                if task.exception() is not None:
                    failure = task.exception()
                else:
                    messages += task.result()
        if failure is not None and not messages:
            raise failure
        return messages

    async def close(self) -> list[Message]:
        """Stop the reads in flight; what they had brought is returned, with the backlog (their
        messages must be released, or they wait for their lease to run out)."""
        for task in self._reads.values():
            task.cancel()
        results = await asyncio.gather(*self._reads.values(), return_exceptions=True)
        self._reads.clear()
        backlog, self._backlog = self._backlog, []
        return backlog + [m for r in results if isinstance(r, list) for m in r]


class DeliveryOps(BridgeCore):
    def lane_reader(self, streams: Sequence[str], consumer: str) -> LaneReader:
        """Reads of a lane's partitions for ``consumer`` (see :class:`LaneReader`)."""
        return LaneReader(self, streams, consumer)

    async def ensure_group(self, stream: str) -> None:
        """Create the stream's consumer group (and the stream) if missing."""
        try:
            await self._redis.xgroup_create(stream, self.keys.group_for_stream(stream), id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, streams: Sequence[str], consumer: str, *, count: int, block_ms: int | None) -> list[Message]:
        """New messages for this consumer (XREADGROUP ``>``) from one lane's streams (its
        partitions: one group name) in one read. A group that vanished (Redis restarted empty, a
        failover to an empty replica, a FLUSHALL) is created again."""
        try:
            reply = await self._redis.xreadgroup(
                self.keys.group_for_stream(streams[0]), consumer, dict.fromkeys(streams, ">"), count=count,
                block=block_ms)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise BridgeClosed(f"read from {streams[0]} failed: {exc}") from exc
            for stream in streams:
                await self._recreate_group(stream)
            return []
        except redis.RedisError as exc:
            raise BridgeClosed(f"read from {streams[0]} failed: {exc}") from exc
        return [Message(text(stream), text(mid), fields) for stream, entries in reply or [] for mid, fields in entries]

    async def _recreate_group(self, stream: str) -> None:
        log.error("consumer group of %s is missing (Redis lost its data?); creating it again", stream)
        try:
            await self.ensure_group(stream)
        except redis.RedisError as exc:
            raise BridgeClosed(f"cannot create the group of {stream}: {exc}") from exc

    async def reclaim(self, stream: str, consumer: str, *, count: int) -> tuple[list[Message], dict[str, int]]:
        """Take over messages idle longer than the lease (a dead consumer's), with their
        delivery counts. Entries deleted from the stream meanwhile are acknowledged."""
        group = self.keys.group_for_stream(stream)
        try:
            reply = await self._redis.xautoclaim(stream, group, consumer, self.lease_ms, "0-0", count=count)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await self._recreate_group(stream)
            return [], {}
        _, entries, *rest = reply  # Redis 6.2 replies with 2 elements, 7.x with 3
        deleted = rest[0] if rest else []
        if deleted:
            await self._redis.xack(stream, group, *deleted)
        messages = [Message(stream, text(mid), fields) for mid, fields in entries if fields is not None]
        return messages, await self.delivery_counts(stream, [m.id for m in messages])

    async def delivery_counts(self, stream: str, ids: Iterable[str]) -> dict[str, int]:
        group = self.keys.group_for_stream(stream)
        pipe = self._redis.pipeline(transaction=False)
        ids = list(ids)
        for mid in ids:
            pipe.xpending_range(stream, group, min=mid, max=mid, count=1)
        counts: dict[str, int] = {}
        for mid, rows in zip(ids, await pipe.execute(), strict=True):
            counts[mid] = int(rows[0]["times_delivered"]) if rows else 0
        return counts

    async def release(self, stream: str, consumer: str, ids: Sequence[str]) -> None:
        """Give messages back so another consumer reclaims them at once (graceful shutdown):
        they stay pending, with an idle time already past the lease."""
        if ids:
            group = self.keys.group_for_stream(stream)
            await self._redis.xclaim(stream, group, consumer, 0, list(ids), idle=self.lease_ms + 1, justid=True)

    async def ack(self, stream: str, ids: Sequence[str]) -> None:
        """Acknowledge and delete (see handoff.lua: acked entries are never read again)."""
        if ids:
            pipe = self._transaction_client(stream).pipeline(transaction=True)
            pipe.xack(stream, self.keys.group_for_stream(stream), *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()

    async def pending_count(self, stream: str) -> int:
        try:
            info = await self._redis.xpending(stream, self.keys.group_for_stream(stream))
        except ResponseError:
            return 0
        return int(info["pending"])

    async def stream_length(self, stream: str) -> int:
        return int(await self._redis.xlen(stream))

    async def note_pools(self, pools: Iterable[str]) -> None:
        """Remember pools that jobs are queued on, so the queue metrics list their streams
        (without scanning the keyspace for them)."""
        if pools := list(pools):
            await self._redis.sadd(self.keys.pools, *pools)

    async def lane_streams(self) -> tuple[list[LaneStream], int]:
        """The control stream and the data streams of the pools jobs were queued on
        (:meth:`note_pools`) and of live workers' pools, and the dead-letter stream's length, in
        one round trip after the two reads of the names (never a keyspace scan: behind a deep
        queue that walked two keys per job). A pool whose stream does not exist (yet) has
        length 0 and no groups; a dead-letter stream that cannot be read counts 0."""
        noted = {text(pool) for pool in await self._redis.smembers(self.keys.pools)}
        names = await self._redis.zrange(self.keys.workers, 0, -1)
        manifests = await self._redis.mget([self.keys.worker(text(name)) for name in names]) if names else []
        live = {orjson.loads(m).get("pool") for m in manifests if m is not None}
        streams = self.keys.lane_streams("control")
        for pool in sorted({*noted, *live} - {None}):
            streams += self.keys.lane_streams(f"python:{pool}")
        pipe = self._redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        pipe.xlen(self.keys.dead_stream)
        replies = await pipe.execute(raise_on_error=False)
        lanes = []
        for i, stream in enumerate(streams):
            length, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, Exception):
                continue
            rows = [] if isinstance(groups, Exception) else [{text(k): v for k, v in g.items()} for g in groups]
            lanes.append(LaneStream(stream, int(length), rows))
        dead = replies[-1]
        return lanes, 0 if isinstance(dead, Exception) else int(dead)


def _is_nogroup(exc: Exception) -> bool:
    """The group is gone (NOGROUP), or the stream under a blocked read was (UNBLOCKED)."""
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))
