"""Queue depth: is the per-job CPU cost the same with 1k and with 1M jobs queued?

A redis-server this script starts; one ControlPlane object in this process (jobs submitted
through its in-process submission API, no HTTP, as in bench/dispatch.py) and no worker while
the python lane fills with D queued single-node ``noop`` jobs. At each depth D it measures the
work a deep queue could make dearer:

* submit: W more jobs (same concurrency as the fill): this process's CPU (``process_time``)
  and redis-server's (psutil) per job;
* drain: a ``dualplane worker`` process (concurrency 512, read batch 512, as ``make bench``)
  started on the deep lane; after its first WARMUP jobs (imports, connections) the next W
  completions are timed: the worker's CPU and redis-server's per job; then it is stopped;
* the periodic passes that may be a function of the depth: one reconciler pass (it walks
  every unfinished job), one read of the worker directory (the router's, every 2 s while jobs
  are submitted) and one listing of the lane streams (what a /metrics scrape reads), with this
  process's and redis-server's CPU for each, and what the scrape then exports.

and prints the Redis memory per stored job and the size of every structure a job lives in
(the job indexes, the active set, the lane stream and its pending list, the control and
dead-letter streams, a job's events stream, the key count), plus, per window, the commands
Redis spent most time in (INFO commandstats, reset before each window) and SLOWLOG entries.

    .venv/bin/python bench/depth.py [--depths 1000,10000,100000,1000000] [--window 5000]

``--depths 1000,10000`` is the quick mode (well under a minute). Jobs drained at one depth
stay in Redis as finished jobs (their hashes live for the retention), so the later depths hold
a few windows more than D. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis.asyncio as aioredis

from dualplane.cli.planes import run_async
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.reconciler import PASS_BUDGET, Reconciler
from dualplane.devstack.services import start_redis, terminate

SINGLE = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
#: Submissions gathered at once: the bridge sends the creates of one tick in one pipeline.
CHUNK = 2000
#: Completions left out before a drain window starts: the worker's imports and first reads.
WARMUP = 500
POLL_S = 0.02
#: A reconciler pass or directory read that would take longer is skipped (it is reported so).
PASS_LIMIT_S = 120.0


@dataclass
class Row:
    depth: int
    submit_ms: tuple[float, float] = (0.0, 0.0)
    submit_rate: float = 0.0
    drain_ms: tuple[float, float] = (0.0, 0.0)
    drain_rate: float = 0.0
    memory: int = 0
    per_job: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)
    passes: dict[str, str] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)


class Cpu:
    """CPU seconds (user + system) of processes, children included (the worker's)."""

    def __init__(self, *pids: int) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]

    def seconds(self) -> float:
        total = 0.0
        for proc in self._procs:
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
        return total


async def submit_many(plane: ControlPlane, count: int) -> None:
    for start in range(0, count, CHUNK):
        await asyncio.gather(*(plane.submit(SINGLE) for _ in range(min(CHUNK, count - start))))


async def fill(plane: ControlPlane, client: aioredis.Redis, depth: int) -> None:
    missing = depth - await client.zcard(plane.bridge.keys.active_jobs(0))
    if missing <= 0:
        return
    started = time.perf_counter()
    step = max(CHUNK, missing // 10)
    done = 0
    while done < missing:
        n = min(step, missing - done)
        await submit_many(plane, n)
        done += n
        if missing >= 100_000:
            elapsed = time.perf_counter() - started
            print(f"  filling to {depth:,}: {done:,}/{missing:,} ({done / elapsed:,.0f} jobs/s)", flush=True)


async def commandstats(client: aioredis.Redis) -> str:
    stats = await client.info("commandstats")
    rows = sorted(((k.removeprefix("cmdstat_"), v) for k, v in stats.items()), key=lambda kv: -kv[1]["usec"])
    return ", ".join(f"{name} {v['calls']:,}x {v['usec_per_call']:.1f}us" for name, v in rows[:6])


async def slowlog(client: aioredis.Redis) -> str:
    entries = await client.slowlog_get(5)
    if not entries:
        return "none"
    return "; ".join(f"{e['duration']}us {e['command'][:60]!r}" for e in entries)


async def reset_stats(client: aioredis.Redis) -> None:
    await client.config_resetstat()
    await client.slowlog_reset()


async def submit_window(plane: ControlPlane, client: aioredis.Redis, redis_cpu: Cpu, row: Row, window: int) -> None:
    await reset_stats(client)
    wall, own, server = time.perf_counter(), time.process_time(), redis_cpu.seconds()
    await submit_many(plane, window)
    wall, own, server = time.perf_counter() - wall, time.process_time() - own, redis_cpu.seconds() - server
    row.submit_ms = (own * 1000 / window, server * 1000 / window)
    row.submit_rate = window / wall
    row.details.append(f"submit commandstats: {await commandstats(client)}")
    row.details.append(f"submit slowlog: {await slowlog(client)}")


def start_worker(redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=redis_url, DUALPLANE_CONCURRENCY="512", DUALPLANE_READ_BATCH="512",
               DUALPLANE_WORKER_ID="depth-worker", DUALPLANE_WORKER_PORT="0", DUALPLANE_LOG_LEVEL="WARNING",
               S3_ENDPOINT="")
    return subprocess.Popen([sys.executable, "-m", "dualplane", "worker"], env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def drained_to(client: aioredis.Redis, key: str, level: int, worker: subprocess.Popen[bytes]) -> None:
    while await client.zcard(key) > level:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}")
        await asyncio.sleep(POLL_S)


async def drain_window(plane: ControlPlane, client: aioredis.Redis, redis_cpu: Cpu, row: Row, window: int,
                       log: Path) -> None:
    active = plane.bridge.keys.active_jobs(0)
    queued = await client.zcard(active)
    worker = start_worker(plane.settings.redis_url, log)
    try:
        worker_cpu = Cpu(worker.pid)
        await drained_to(client, active, queued - WARMUP, worker)
        await reset_stats(client)
        begin = await client.zcard(active)
        wall, own, server = time.perf_counter(), worker_cpu.seconds(), redis_cpu.seconds()
        await drained_to(client, active, begin - window, worker)
        wall, own, server = time.perf_counter() - wall, worker_cpu.seconds() - own, redis_cpu.seconds() - server
        done = begin - await client.zcard(active)
        row.drain_ms = (own * 1000 / done, server * 1000 / done)
        row.drain_rate = done / wall
        row.details.append(f"drain commandstats: {await commandstats(client)}")
        row.details.append(f"drain slowlog: {await slowlog(client)}")
    finally:
        terminate(worker, 30.0)


async def timed_pass(name: str, row: Row, redis_cpu: Cpu, coroutine: object) -> None:
    wall, own, server = time.perf_counter(), time.process_time(), redis_cpu.seconds()
    try:
        await asyncio.wait_for(coroutine, PASS_LIMIT_S)  # type: ignore[arg-type]
    except TimeoutError:
        row.passes[name] = f"over {PASS_LIMIT_S:.0f} s"
        return
    wall, own, server = time.perf_counter() - wall, time.process_time() - own, redis_cpu.seconds() - server
    row.passes[name] = f"{wall:.2f} s wall, CPU {own:.2f} s here + {server:.2f} s redis"


async def scrape(plane: ControlPlane) -> str:
    """What /metrics says of Redis: its read gives up after its own timeout, and then it
    exports redis_up 0 and no queue series."""
    text = (await plane.scrape()).decode()
    up = next((line.split()[-1] for line in text.splitlines() if line.startswith("dualplane_redis_up ")), "?")
    queued = sum(1 for line in text.splitlines() if line.startswith("dualplane_queue_messages{"))
    return f"dualplane_redis_up {up}, {queued} dualplane_queue_messages series"


async def sizes(plane: ControlPlane, client: aioredis.Redis) -> dict[str, int]:
    keys = plane.bridge.keys
    lane = keys.data_stream(plane.settings.pool)
    newest = await client.zrange(keys.active_jobs(0), -1, -1)
    job_id = newest[0].decode() if newest else ""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.jobs_index(0))
    pipe.zcard(keys.active_jobs(0))
    pipe.xlen(lane)
    pipe.xpending(lane, keys.group_for_stream(lane))
    pipe.xlen(keys.control_stream())
    pipe.xlen(keys.dead_stream)
    pipe.dbsize()
    pipe.xlen(keys.events(job_id))
    pipe.memory_usage(keys.job(job_id))
    pipe.memory_usage(keys.events(job_id))
    pipe.memory_usage(lane)
    jobs, active, lane_len, pending, control, dead, dbsize, events, job_mem, events_mem, lane_mem = \
        await pipe.execute(raise_on_error=False)
    return {"jobs index": jobs, "active": active, "lane": lane_len,
            "pending": pending["pending"] if isinstance(pending, dict) else 0, "control": control, "dead": dead,
            "keys": dbsize, "events/job": events, "job hash B": job_mem or 0, "events B": events_mem or 0,
            "lane B": lane_mem or 0}


async def run(args: argparse.Namespace) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="dp-depth-"))
    rows: list[Row] = []
    with start_redis(tmp / "redis") as server:
        redis_cpu = Cpu(server.process.pid)
        # the reconciler is measured as a pass of its own: left running it would land in
        # whichever window its timer fell into
        settings = Settings(redis_url=server.url, s3_endpoint=None, concurrency=256, read_batch=512,
                            reconcile_interval_s=0)
        plane = ControlPlane(settings)
        await plane.start()
        client = aioredis.Redis.from_url(server.url)
        try:
            empty = int((await client.info("memory"))["used_memory"])
            await submit_many(plane, 200)  # warm-up: imports, scripts loaded, connections
            for depth in args.depths:
                await fill(plane, client, depth)
                row = Row(depth)
                await submit_window(plane, client, redis_cpu, row, args.window)
                row.sizes = await sizes(plane, client)
                row.memory = int((await client.info("memory"))["used_memory"])
                row.per_job = (row.memory - empty) / max(1, row.sizes["jobs index"])
                if not args.no_passes:
                    await timed_pass("reconciler sweep (dualplane reconcile: every active job)", row, redis_cpu,
                                     Reconciler(plane.bridge, interval_s=0).run_once(repair=False))
                    await timed_pass(f"reconciler background pass (at most {PASS_BUDGET:,} jobs)", row, redis_cpu,
                                     Reconciler(plane.bridge, interval_s=0).run_once(repair=False, budget=PASS_BUDGET))
                    await timed_pass("worker-directory read", row, redis_cpu, plane.router.workers(fresh=True))
                    await timed_pass("lane-stream listing (the /metrics read)", row, redis_cpu,
                                     plane.bridge.lane_streams())
                    row.passes["/metrics scrape"] = await scrape(plane)
                await drain_window(plane, client, redis_cpu, row, args.window, tmp / "worker.log")
                rows.append(row)
                print(f"  depth {depth:,} measured", flush=True)
        finally:
            await client.aclose()
            await plane.stop(1.0)
    return rows


def table(rows: list[Row], window: int) -> str:
    head = ("| depth | submit CPU-ms/job (producer, redis) | drain CPU-ms/job (worker, redis) | jobs/s (submit, drain) "
            "| redis used_memory (per stored job) | key sizes |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        s = r.sizes
        keys = (f"jobs {s['jobs index']:,}, active {s['active']:,}, lane {s['lane']:,} (pending {s['pending']}, "
                f"{s['lane B'] / 2**20:,.1f} MiB), control {s['control']}, dead {s['dead']}, keys {s['keys']:,}, "
                f"events/job {s['events/job']} ({s['events B']} B), job hash {s['job hash B']} B")
        lines.append(f"| {r.depth:,} | {r.submit_ms[0]:.3f}, {r.submit_ms[1]:.3f} | {r.drain_ms[0]:.3f}, "
                     f"{r.drain_ms[1]:.3f} | {r.submit_rate:,.0f}, {r.drain_rate:,.0f} | "
                     f"{r.memory / 2**20:,.0f} MiB ({r.per_job:,.0f} B) | {keys} |")
    lines.append(f"(window W = {window:,} jobs each way: submitted at depth D, then drained after {WARMUP} "
                 f"warm-up completions; memory and key sizes read between the two, at D + W)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="1000,10000,100000,1000000",
                        type=lambda text: [int(part) for part in text.split(",")])
    parser.add_argument("--window", type=int, default=5000, help="jobs submitted, then drained, at each depth")
    parser.add_argument("--no-passes", action="store_true", help="skip the reconciler pass and directory read")
    args = parser.parse_args()
    if min(args.depths) < WARMUP:
        parser.error(f"every depth must be at least {WARMUP} (the drain's warm-up)")
    print(f"queue-depth benchmark: 1 control-plane object (in-process submission API, no HTTP), "
          f"1 worker process per drain window, local redis-server; {os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    rows = run_async(run(args))
    print(table(rows, args.window))
    for r in rows:
        print(f"depth {r.depth:,}:")
        for name, text in r.passes.items():
            print(f"  {name}: {text}")
        for line in r.details:
            print(f"  {line}")
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
