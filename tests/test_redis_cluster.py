"""The test Redis Cluster (tests/conftest.py: redis_cluster, redis_cluster_client) is a real one:
3 primaries with a replica each, slot routing, the one-slot rule for Lua, failover on a crash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, ClusterDownError, RedisClusterException

from dualplane.devstack.services import CLUSTER_SLOTS, LOOPBACK, RedisClusterServer, RedisServer

pytestmark = pytest.mark.integration

#: generous: only a hung cluster should hit these on a loaded CI box
FAILOVER_TIMEOUT_S = 30.0
READ_BACK_TIMEOUT_S = 30.0


def _keys_on(cluster: RedisClusterServer, primary: RedisServer, count: int, prefix: str) -> list[bytes]:
    keys = []
    for i in range(100 * count):
        key = f"{prefix}:{i}".encode()
        if cluster.primary_for_key(key).port == primary.port:
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError(f"found only {len(keys)} keys on primary {primary.port}")


def _node_client(node: RedisServer) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=node.port, socket_timeout=5)


async def _poll(ready: Callable[[], bool], timeout_s: float, what: str, cluster: RedisClusterServer) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s\n{cluster.log_tails()}")
        await asyncio.sleep(0.05)


async def test_three_primaries_each_with_a_linked_replica_serve_every_slot(
    redis_cluster: RedisClusterServer, redis_cluster_client: aioredis.RedisCluster
) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    assert len(redis_cluster.replicas()) == 3
    for primary in primaries:
        [replica] = redis_cluster.replicas_of(primary)
        with _node_client(replica) as client:
            replication = client.info("replication")
        assert replication["master_port"] == primary.port
        assert replication["master_link_status"] == "up"
    for node in redis_cluster.nodes:
        with _node_client(node) as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info
        assert f"cluster_slots_ok:{CLUSTER_SLOTS}" in info

    for primary in primaries:
        [key] = _keys_on(redis_cluster, primary, 1, "each")
        await redis_cluster_client.set(key, b"v-" + key)
        assert await redis_cluster_client.get(key) == b"v-" + key
        # the key really lives on the primary the slot map names, not just somewhere
        with _node_client(primary) as client:
            assert client.get(key) == b"v-" + key


async def test_lua_may_touch_keys_of_one_hash_tag_only(
    redis_cluster: RedisClusterServer, redis_cluster_client: aioredis.RedisCluster
) -> None:
    two_sets = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[2]); " \
               "return redis.call('MGET', KEYS[1], KEYS[2])"
    same_tag = [b"{job:7}:state", b"{job:7}:owner"]
    assert await redis_cluster_client.eval(two_sets, 2, *same_tag, b"queued", b"w1") == [b"queued", b"w1"]

    apart = [b"job:7:state", b"job:8:state"]
    assert key_slot(apart[0]) != key_slot(apart[1])
    # redis-py refuses before sending...
    with pytest.raises(RedisClusterException, match="same key slot"):
        await redis_cluster_client.eval(two_sets, 2, *apart, b"a", b"b")
    # ...and the server itself refuses (a -CROSSSLOT reply, which redis-py raises as
    # ClusterCrossSlotError), even on the node owning the first key: the constraint is Redis's
    with _node_client(redis_cluster.primary_for_key(apart[0])) as client, \
            pytest.raises(ClusterCrossSlotError):
        client.eval(two_sets, 2, *apart, b"a", b"b")


@pytest.mark.slow
async def test_a_killed_primary_is_replaced_by_its_replica_without_losing_waited_writes(
    redis_cluster: RedisClusterServer, redis_cluster_client: aioredis.RedisCluster
) -> None:
    primary = redis_cluster.primaries()[0]
    [replica] = redis_cluster.replicas_of(primary)
    keys = _keys_on(redis_cluster, primary, 20, "failover")

    # one connection: WAIT counts the replica acknowledgements of this connection's writes
    writer = aioredis.Redis(host=LOOPBACK, port=primary.port, single_connection_client=True)
    try:
        for key in keys:
            await writer.set(key, b"v-" + key)
        acked = 0
        for _ in range(10):  # WAIT gives up after 1 s and says so; a slow box may need more tries
            acked = await writer.execute_command("WAIT", 1, 1000)
            if acked >= 1:
                break
        assert acked >= 1, "the replica never acknowledged the writes"
    finally:
        await writer.aclose()
    # the client meets the crash with a slot map naming the dead primary, as a running app would
    assert await redis_cluster_client.get(keys[0]) == b"v-" + keys[0]

    slot = key_slot(keys[0])
    redis_cluster.kill(primary)
    killed_at = time.monotonic()
    await _poll(lambda: redis_cluster.primary_for_slot(slot).port == replica.port,
                FAILOVER_TIMEOUT_S, f"replica {replica.port} promoted", redis_cluster)
    print(f"failover took {time.monotonic() - killed_at:.1f} s")

    values: list[bytes | None] = []
    deadline = time.monotonic() + READ_BACK_TIMEOUT_S
    while True:
        try:
            values = [await redis_cluster_client.get(key) for key in keys]
            break
        except (redis.ConnectionError, redis.TimeoutError, ClusterDownError):
            # the client's own retries may run out while other nodes still gossip the new map
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert values == [b"v-" + key for key in keys]

    redis_cluster.restart(primary)
    redis_cluster.wait_healthy()
    assert [node.port for node in redis_cluster.replicas_of(replica)] == [primary.port]


async def test_flushall_empties_every_primary_and_its_replica(
    redis_cluster: RedisClusterServer, redis_cluster_client: aioredis.RedisCluster
) -> None:
    for primary in redis_cluster.primaries():
        for key in _keys_on(redis_cluster, primary, 3, "flush"):
            await redis_cluster_client.set(key, b"x")
    redis_cluster.flushall()
    for node in redis_cluster.nodes:
        with _node_client(node) as client:
            assert client.dbsize() == 0, f"node {node.port} kept keys"
