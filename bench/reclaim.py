"""Kill → reclaim under a saturated pool: how long a dead worker's messages wait for another.

Two rescuer workers and one victim (``dualplane worker`` subprocesses, concurrency 4 each)
serve one pool on a redis-server this script starts, with a short lease. A backlog of 1-second
jobs is kept far above what they can run, so every slot is busy and a new message is always
waiting. The victim is SIGKILLed while it holds jobs; the script then watches the pending
entries it held (XPENDING) and prints, for each, how long after the kill another consumer
took it over — and how much backlog was still queued at that moment.

    .venv/bin/python bench/reclaim.py [--lease 4] [--kills 3]

The target is "within about lease + lease/2 while the pool is busy". Prints figures; asserts
nothing. It drives only the public pieces (ControlPlane.submit, the worker command), so the
same file runs against an older checkout for a before/after comparison:
``cd OLD && PYTHONPATH=. NEW/.venv/bin/python NEW/bench/reclaim.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.devstack.services import start_redis

JOB = {"nodes": [{"id": "s", "task": "sleep", "plane": "python", "params": {"seconds": 1.0, "steps": 2}}]}
CONCURRENCY = 4
BACKLOG = 60  # jobs kept queued beyond the running ones: the pool never runs dry


def spawn(redis_url: str, worker_id: str, lease_s: float, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=redis_url, DUALPLANE_CONCURRENCY=str(CONCURRENCY),
               DUALPLANE_WORKER_ID=worker_id, DUALPLANE_WORKER_PORT="0", DUALPLANE_LEASE_S=str(lease_s),
               DUALPLANE_LOG_LEVEL="WARNING", DUALPLANE_READ_BLOCK_MS="200")
    env.pop("S3_ENDPOINT", None)
    return subprocess.Popen([sys.executable, "-m", "dualplane", "worker"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def keep_saturated(plane: ControlPlane, stream: str, client: aioredis.Redis, stop: asyncio.Event) -> None:
    group = plane.bridge.keys.group_for_stream(stream)
    while not stop.is_set():
        groups = {g["name"].decode(): g for g in await client.xinfo_groups(stream)} if await client.exists(stream) \
            else {}
        lag = int(groups.get(group, {}).get("lag") or 0)
        for _ in range(max(0, BACKLOG - lag)):
            await plane.submit(JOB)
        await asyncio.sleep(0.1)


async def backlog(client: aioredis.Redis, stream: str, group: str) -> int:
    for info in await client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info.get("lag") or 0)
    return 0


async def one_kill(redis_url: str, lease_s: float, plane: ControlPlane, client: aioredis.Redis, logs: Path,
                   index: int) -> list[tuple[float, int]]:
    stream = plane.bridge.keys.data_stream("default")
    group = plane.bridge.keys.group_for_stream(stream)
    victim_id = f"victim-{index}"
    victim = spawn(redis_url, victim_id, lease_s, logs / f"{victim_id}.log")
    deadline = time.monotonic() + 60
    held: list[bytes] = []
    while len(held) < CONCURRENCY:  # the victim is full: kill it now
        assert time.monotonic() < deadline, "the victim never filled its slots"
        rows = await client.xpending_range(stream, group, min="-", max="+", count=1000, consumername=victim_id)
        held = [row["message_id"] for row in rows]
        await asyncio.sleep(0.05)
    await asyncio.sleep(lease_s / 3)  # a lease beat has just gone out: the worst case is a full lease
    rows = await client.xpending_range(stream, group, min="-", max="+", count=1000, consumername=victim_id)
    held = [row["message_id"] for row in rows]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait()
    taken: dict[bytes, tuple[float, int]] = {}
    while len(taken) < len(held) and time.monotonic() - killed_at < 20 * lease_s:
        for message_id in held:
            if message_id in taken:
                continue
            rows = await client.xpending_range(stream, group, min=message_id, max=message_id, count=1)
            if not rows or rows[0]["consumer"].decode() != victim_id:  # reclaimed (or done)
                taken[message_id] = (time.monotonic() - killed_at, await backlog(client, stream, group))
        await asyncio.sleep(0.01)
    missing = len(held) - len(taken)
    if missing:
        print(f"  kill {index}: {missing} of {len(held)} messages still not reclaimed after {20 * lease_s:.0f} s")
    return list(taken.values())


async def main(lease_s: float, kills: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp) / "redis")
        logs = Path(tmp)
        settings = Settings(redis_url=server.url, lease_s=lease_s, read_block_ms=200, concurrency=8)
        plane = ControlPlane(settings)
        await plane.start()
        client = aioredis.Redis.from_url(server.url)
        rescuers = [spawn(server.url, f"rescuer-{i}", lease_s, logs / f"rescuer-{i}.log") for i in range(2)]
        stop = asyncio.Event()
        feeder = None
        try:
            stream = plane.bridge.keys.data_stream("default")
            await plane.bridge.ensure_group(stream)
            feeder = asyncio.create_task(keep_saturated(plane, stream, client, stop))
            await asyncio.sleep(3.0)  # rescuers busy, backlog standing
            delays: list[float] = []
            queued: list[int] = []
            for index in range(kills):
                for delay, waiting in await one_kill(server.url, lease_s, plane, client, logs, index):
                    delays.append(delay)
                    queued.append(waiting)
        finally:
            stop.set()
            if feeder is not None:
                await feeder
            for proc in rescuers:
                proc.terminate()
            for proc in rescuers:
                proc.wait(30)
            await client.aclose()
            await plane.stop(0.5)
            server.stop()
    if not delays:
        print("no message was reclaimed")
        return
    print(f"lease {lease_s:g} s; {kills} kills of a worker holding {CONCURRENCY} jobs; 2 busy rescuers "
          f"(concurrency {CONCURRENCY}); backlog kept at {BACKLOG}")
    print(f"kill -> reclaim: min {min(delays):.2f} s, median {statistics.median(delays):.2f} s, "
          f"max {max(delays):.2f} s  (= {max(delays) / lease_s:.2f} x lease; target <= 1.5 x lease)")
    print(f"backlog still queued when they were reclaimed: min {min(queued)}, median {statistics.median(queued):.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lease", type=float, default=4.0, help="lease seconds (default 4)")
    parser.add_argument("--kills", type=int, default=3, help="victims killed one after another (default 3)")
    args = parser.parse_args()
    asyncio.run(main(args.lease, args.kills))
