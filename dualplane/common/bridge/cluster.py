"""Redis Cluster: the client, and the batcher's round trips split by the node that owns each slot.

Every command the bridge sends touches keys of one slot (:mod:`.keys`: a job's keys and its lane
entries share its partition's hash tag), so a batch of script calls is a handful of per-node
batches sent side by side, each in one write on a connection of that node. A command refused with
a redirect (MOVED, ASK, TRYAGAIN, CLUSTERDOWN: the slot moved, is moving, or a failover is under
way) did not run, so it is sent again once the slot map is refreshed; a command whose connection
failed may have run and is never sent again (its callers see the error, as on a single Redis,
and the fences make the retry they do from the top harmless).

Durability: replication is asynchronous, so a write a primary acknowledged can be lost if that
primary dies before its replica has it. With ``wait_replicas`` > 0 each per-node batch ends with
``WAIT <n> <timeout>`` on the same connection: a batch's callers get their replies only once
``n`` replicas hold the batch (or the timeout passed: then the write is still on the primary and
the shortfall is logged and counted), so a failover to that replica keeps every write whose
caller went on — an accepted job, a claim's fence, a succeeded node.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    TryAgainError,
)

from dualplane.common.bridge.batching import send_and_read
from dualplane.common.bridge.translation import torn_connection
from dualplane.common.models import BridgeConfig

log = logging.getLogger("dualplane.bridge")

#: A command refused this many times in a row (the slot map kept changing) fails.
MAX_REDIRECTS = 5
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


class _WaitingCluster(aioredis.RedisCluster):
    """redis-py's cluster client, waiting (bounded) for a node's connection where it would raise
    at ``max_connections``, as the single-Redis pool does (connection.py ``_WaitingPool``): a
    burst of submissions must queue, not fail. Nothing was sent when that error is raised."""

    wait_timeout_s: float = 5.0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await wait_for_connection(lambda: super(_WaitingCluster, self).execute_command(*args, **kwargs),
                                         self.wait_timeout_s)


async def wait_for_connection(attempt: Any, timeout_s: float) -> Any:
    """``attempt()`` again while every connection of its node is taken, for up to ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pause = 0.001
    while True:
        try:
            return await attempt()
        except MaxConnectionsError:
            if loop.time() >= deadline:
                raise redis.ConnectionError(f"no Redis connection free within {timeout_s} s") from None
            await asyncio.sleep(pause)
            pause = min(0.05, pause * 2)


def cluster_client(config: BridgeConfig) -> aioredis.RedisCluster:
    """redis-py's asyncio cluster client on the nodes ``redis_url`` names (one is enough: it
    finds the rest), bytes in and out like the single-Redis client."""
    client = _WaitingCluster.from_url(
        config.redis_url, decode_responses=False, max_connections=config.max_connections,
        require_full_coverage=False)
    assert isinstance(client, _WaitingCluster)
    client.wait_timeout_s = config.pool_timeout_s
    return client


def sync_cluster_client(url: str) -> redis.RedisCluster:
    """The blocking counterpart (the lease keeper's thread)."""
    return redis.RedisCluster.from_url(url, require_full_coverage=False)


class ClusterRoundTrips:
    """Batches of commands, each keyed by one of its keys, sent to the primaries that own them."""

    def __init__(self, cluster: aioredis.RedisCluster, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self._cluster = cluster
        self._wait_timeout_s = getattr(cluster, "wait_timeout_s", 5.0)
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._refreshing: asyncio.Future[None] | None = None

    async def send(self, keyed: Sequence[tuple[bytes | str, Sequence[Any]]]) -> list[Any]:
        """Each ``(key, command)``'s raw reply, in order (an error reply is that command's result;
        a connection that failed makes every command sent on it fail with its error)."""
        replies: list[Any] = [None] * len(keyed)
        todo = list(range(len(keyed)))
        slots = [key_slot(key.encode() if isinstance(key, str) else key) for key, _ in keyed]
        for attempt in range(MAX_REDIRECTS + 1):
            if attempt:
                await self.refresh()
            by_node: dict[Any, list[int]] = defaultdict(list)
            for i in todo:
                try:
                    node = self._cluster.nodes_manager.get_node_from_slot(slots[i])
                except redis.RedisError as exc:  # a slot nobody serves (a failover under way)
                    replies[i] = exc
                    continue
                by_node[node].append(i)
            groups = list(by_node.items())
            results = await asyncio.gather(*(
                wait_for_connection(functools.partial(self._node_round_trip, node, [keyed[i][1] for i in indexes]),
                                    self._wait_timeout_s)
                for node, indexes in groups), return_exceptions=True)
            redo: list[int] = []
            for (node, indexes), result in zip(groups, results, strict=True):
                if isinstance(result, BaseException):
                    self._node_failed(node)
                    for i in indexes:
                        replies[i] = result
                    continue
                for i, reply in zip(indexes, result, strict=True):
                    if isinstance(reply, _REDIRECTS) and attempt < MAX_REDIRECTS:
                        redo.append(i)
                    else:
                        replies[i] = reply
            if not redo:
                break
            todo = sorted(redo)
        return replies

    async def _node_round_trip(self, node: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
        wait = self._wait_replicas > 0
        if wait:
            commands = [*commands, ("WAIT", self._wait_replicas, self._wait_timeout_ms)]
        connection = node.acquire_connection()
        try:
            replies = await send_and_read(connection, commands)
        except AttributeError as exc:
            if (lost := torn_connection(exc)) is not None:
                raise lost from exc
            raise
        finally:
            node.release(connection)
        if wait:
            acked = replies.pop()
            if not isinstance(acked, Exception) and int(acked) < self._wait_replicas:
                log.warning("only %s of %d replicas of %s acknowledged a write within %d ms", acked,
                            self._wait_replicas, node.name, self._wait_timeout_ms)
        return replies

    def _node_failed(self, node: Any) -> None:
        """A node's connection failed: its free connections go, and the slot map is read again
        (a failover promotes a replica: the slots have a new owner)."""
        node.update_active_connections_for_reconnect()
        self._start_refresh()

    async def refresh(self) -> None:
        """Read the slot map again (once at a time)."""
        await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Future[None]:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh_quietly())
        return self._refreshing

    async def _refresh_quietly(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except redis.RedisError as exc:  # every node unreachable: the next call tries again
            log.warning("cannot read the cluster's slot map: %s", exc)
