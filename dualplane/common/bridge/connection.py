"""The bridge's connection to Redis: its pool, its lifecycle, and the core the operations share.

Every module of operations (:mod:`.delivery`, :mod:`.jobs`, ...) is a mixin of :class:`BridgeCore`:
it reaches Redis through ``BridgeCore._redis`` and the batched scripts through
:meth:`BridgeCore._call`; nothing outside the bridge does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import Sequence
from typing import Any, Self

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import DataError, MaxConnectionsError

from dualplane.common.bridge.batching import Batcher, Call, Scripts, round_trip
from dualplane.common.bridge.cluster import ClusterRoundTrips, cluster_client
from dualplane.common.bridge.keys import Keys
from dualplane.common.errors import BridgeClosed
from dualplane.common.models import BridgeConfig

#: A pooled connection idle longer than this is PINGed before its next command.
IDLE_CHECK_S = 1.0


class _CheckedConnection(aioredis.Connection):
    """A pooled connection that finds out it went stale (Redis restarted, a failover) before it
    sends a command, and reconnects once: without it, every connection idle in the pool fails
    one request after a restart. Only the PING is repeated, never a command: a command that
    fails half-way may have run, and most of ours must not run twice."""

    _ping_retry = Retry(NoBackoff(), 1)

    async def check_health(self) -> None:
        if self.health_check_interval and asyncio.get_running_loop().time() > self.next_health_check:
            await self._ping_retry.call_with_retry(self._send_ping, self._ping_failed, with_failure_count=True)

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in RESP, packed by hiredis (C) as redis-py's sync client does; the asyncio
        client packs in Python, argument by argument, which was the largest single cost of a
        submission (a job's create script has about 36 arguments). Floats come out as ``repr``
        writes them, as redis-py's encoder does."""
        if isinstance(args[0], str):  # 'CONFIG GET' and the like: the words go as arguments
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


class _WaitingPool(aioredis.ConnectionPool):
    """redis-py's pool, waiting up to ``wait_timeout_s`` for a free connection where it would
    raise at ``max_connections``. (``BlockingConnectionPool`` waits too, but takes a Condition
    and arms a timer for every command, which cost the dispatch path about 8 %.)"""

    def __init__(self, *, wait_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait_timeout_s = wait_timeout_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except MaxConnectionsError:
            pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_timeout_s
        while (remaining := deadline - loop.time()) > 0:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                break
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                continue
        raise redis.ConnectionError(f"no Redis connection free within {self._wait_timeout_s} s "
                                    f"({self.max_connections} in use)")

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class BridgeCore:
    """The connection and what every operation needs: config, keys, the client, the batcher.

    :param config: validated bridge configuration (see ``bridge_config.schema.json``).
    :param client: an existing asyncio client (tests); one is created from the URL otherwise.
    """

    def __init__(self, config: BridgeConfig, *, client: aioredis.Redis | aioredis.RedisCluster | None = None) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix, config.partitions)
        self.lease_ms = int(config.lease_s * 1000)
        self.heartbeat_s = config.heartbeat_s or config.lease_s / 3
        self._client: aioredis.Redis | aioredis.RedisCluster | None = client
        self._owns_client = client is None
        self._scripts = Scripts()
        self._batcher: Batcher | None = None
        self._cluster: ClusterRoundTrips | None = None
        #: On a cluster, a plain client per node for transactions (see :meth:`_transaction_client`).
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._state = _State.NEW

    async def connect(self) -> Self:
        if self._state is _State.OPEN:
            return self
        if self._state is _State.CLOSED:
            raise BridgeClosed("bridge was closed")
        if self._client is None and self.config.cluster:
            self._client = cluster_client(self.config)
        elif self._client is None:
            # a burst past max_connections waits (bounded) for a connection instead of failing
            # at once, and a wait that runs out is a clean "unavailable"
            pool = _WaitingPool.from_url(
                self.config.redis_url, max_connections=self.config.max_connections,
                wait_timeout_s=self.config.pool_timeout_s, connection_class=_CheckedConnection,
                health_check_interval=IDLE_CHECK_S)
            self._client = aioredis.Redis(connection_pool=pool, decode_responses=False)
        if isinstance(self._client, aioredis.RedisCluster):
            self._scripts = Scripts(sharded=True)
            self._cluster = ClusterRoundTrips(self._client, wait_replicas=self.config.wait_replicas,
                                              wait_timeout_ms=self.config.wait_timeout_ms)
            # a plane starts while the cluster is down; the slot map is read on first use then
            with contextlib.suppress(redis.RedisError):
                await self._client.initialize()
        # loading is an optimisation: a plane starts while Redis is down (and says so on /health);
        # on a cluster it loads on every primary, and a node that missed it is sent the source
        with contextlib.suppress(redis.RedisError):
            for source in self._scripts.sources.values():
                await self._client.script_load(source)
        self._batcher = Batcher(self._client, self._scripts, send=self._round_trip)
        self._state = _State.OPEN
        return self

    async def close(self) -> None:
        if self._state is _State.OPEN and self._batcher and self._batcher.flusher:
            await asyncio.gather(self._batcher.flusher, return_exceptions=True)
        for node_client in self._node_clients.values():
            await node_client.aclose()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self._state = _State.CLOSED

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _redis(self) -> Any:
        """The raw redis-py client, for the bridge's own modules only. Typed ``Any`` on purpose:
        redis-py 8 types every reply as ``bytes | str`` (and some as ``Awaitable | value``)
        whatever ``decode_responses`` says; this client never decodes, and the bridge's methods
        give the typed answers."""
        if self._state is not _State.OPEN or self._client is None:
            raise BridgeClosed(f"bridge is {self._state.value}")
        return self._client

    def _transaction_client(self, key: str) -> Any:
        """The client to run a MULTI/EXEC (or WATCH) on ``key``'s slot with: the Redis itself, or
        on a cluster a plain client of the primary that serves the slot now. redis-py's cluster
        pipelines run a watched transaction's reads in a thread of their own, on an event loop of
        their own, with the main loop's connections (and block the loop meanwhile): a plain
        client of one node has none of that. Every transaction's keys share one hash tag; a slot
        that moved under it answers MOVED, an error for that one call, and the map is read again."""
        redis_client = self._redis
        if self._cluster is None:
            return redis_client
        node = redis_client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k not in ("retry", "host", "port")}
            client = self._node_clients[node.name] = aioredis.Redis(
                connection_pool=aioredis.ConnectionPool(host=node.host, port=node.port, max_connections=8, **kwargs))
        return client

    async def _round_trip(self, keyed: Sequence[tuple[Any, Sequence[Any]]]) -> list[Any]:
        """Commands (each with the key that places it on a cluster) in one write, their raw
        replies in order: :func:`~.batching.round_trip` on one Redis, per primary on a cluster."""
        if self._cluster is not None:
            return await self._cluster.send(keyed)
        return await round_trip(self._redis.connection_pool, [command for _, command in keyed])

    async def _command(self, key: Any, *args: Any) -> Any:
        """One command's raw reply (an HGETALL is a flat list in RESP2, a map in RESP3) through
        :meth:`_round_trip`, for the hot reads; an error reply raises. ``key`` is its key."""
        reply = (await self._round_trip([(key, args)]))[0]
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply

    def _call(self, call: Call) -> asyncio.Future[Any]:
        if self._state is not _State.OPEN or self._batcher is None:
            raise BridgeClosed(f"bridge is {self._state.value}")
        return self._batcher.call(call)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except redis.RedisError:
            return False
