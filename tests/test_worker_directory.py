"""The worker directory (bridge/directory.py): live manifests read without a keyspace scan."""

from __future__ import annotations

import asyncio
import time

from dualplane.common.bridge import Bridge
from dualplane.common.bridge.directory import FORGET_AFTER_S
from dualplane.common.settings import Settings
from dualplane.data_plane import worker as worker_module


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


async def test_the_lane_streams_are_listed_from_noted_and_served_pools_without_a_scan(redis_server, redis):
    bridge = await _bridge(redis_server, redis).connect()
    await redis.mset({f"{bridge.keys.job(str(i))}": b"x" for i in range(5000)})
    await bridge.note_pools(["default", "gpu"])
    await bridge.publish_capabilities("w1", b'{"worker_id":"w1","pool":"cpu-big"}', 30.0)
    await redis.xadd(bridge.keys.data_stream("gpu"), {"m": b"{}"})
    await redis.config_resetstat()
    lanes, dead = await bridge.lane_streams()
    commands = {name.removeprefix("cmdstat_") for name in await redis.info("commandstats")}

    assert {lane.stream: lane.length for lane in lanes} == {
        bridge.keys.control_stream(): 0, bridge.keys.data_stream("cpu-big"): 0,
        bridge.keys.data_stream("default"): 0, bridge.keys.data_stream("gpu"): 1}
    assert dead == 0 and "scan" not in commands and "keys" not in commands


async def test_a_worker_stops_even_when_its_heartbeat_swallows_a_cancellation(worker_factory, monkeypatch):
    # Python 3.11's wait_for can swallow a cancel (the heartbeat's model refresh waits so); the
    # heartbeat must still end when the worker stops, or the worker's shutdown waits on it for ever
    monkeypatch.setattr(worker_module, "MANIFEST_TTL_S", 0.03)  # beats every 10 ms
    running = await worker_factory()
    beating = asyncio.Event()

    async def announce_swallowing_cancellation() -> None:
        beating.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return  # swallowed, as wait_for may

    monkeypatch.setattr(running.worker, "_announce", announce_swallowing_cancellation)
    await asyncio.wait_for(beating.wait(), 10)
    await running.stop()  # raises AssertionError, naming the tasks, if it does not stop within 30 s
