"""The worker directory (bridge/directory.py): live manifests read without a keyspace scan."""

from __future__ import annotations

import asyncio
import time

from dualplane.common.bridge import Bridge
from dualplane.common.bridge.directory import FORGET_AFTER_S
from dualplane.common.settings import Settings


def _bridge(redis_server, redis) -> Bridge:
    return Bridge(Settings(redis_url=redis_server.url, s3_endpoint=None).bridge_config(), client=redis)


async def test_live_workers_are_read_without_scanning_the_keyspace_behind_a_deep_queue(redis_server, redis):
    bridge = await _bridge(redis_server, redis).connect()
    await redis.mset({f"{bridge.keys.job(str(i))}": b"x" for i in range(5000)})  # what a deep queue holds
    await bridge.publish_capabilities("live", b'{"worker_id":"live"}', 30.0)
    await bridge.publish_capabilities("stopped", b'{"worker_id":"stopped"}', 30.0)
    await bridge.publish_capabilities("expired", b'{"worker_id":"expired"}', 0.05)
    await bridge.remove_worker("stopped")
    await asyncio.sleep(0.1)
    await redis.config_resetstat()
    assert await bridge.live_workers() == [b'{"worker_id":"live"}']
    commands = {name.removeprefix("cmdstat_"): row["calls"] for name, row in (await redis.info("commandstats")).items()}
    assert "scan" not in commands and "keys" not in commands
    assert sum(commands.values()) <= 3


async def test_a_long_dead_workers_name_leaves_the_directory_at_the_next_publish(redis_server, redis):
    bridge = await _bridge(redis_server, redis).connect()
    await redis.zadd(bridge.keys.workers, {"gone": time.time() - FORGET_AFTER_S - 60})
    await bridge.publish_capabilities("live", b'{"worker_id":"live"}', 30.0)
    assert await redis.zrange(bridge.keys.workers, 0, -1) == [b"live"]
