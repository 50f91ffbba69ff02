"""Dispatch benchmark: jobs/s and submit → completed latency on a local Redis.

One control-plane process (this one: the ControlPlane object with its control runner,
jobs submitted through its in-process submission API — no HTTP) and one worker process
(``dualplane worker`` started as a subprocess) on a redis-server this script starts.

    .venv/bin/python bench/dispatch.py [--jobs 20000] [--graphs 6000] [--latency 500]
    .venv/bin/python bench/dispatch.py --cluster [--partitions 1,3,6,12]

``--cluster``: a real Redis Cluster of 3 primaries (each with a replica) on this machine, two
control planes (this process and a ``dualplane control-plane`` subprocess) and three worker
processes, for each partition count in turn: jobs/s, and per primary its Redis CPU and commands
per job (the inputs of the model in docs/scaling.md). Every process shares this machine's cores,
so the figures show the cluster path's overhead and how it spreads, not a cluster's capacity.

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from dualplane.cli.planes import run_async
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.devstack.services import free_port, start_redis, start_redis_cluster

SINGLE = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
THREE = {"nodes": [
    {"id": "pre", "task": "emit", "plane": "control"},
    {"id": "mid", "task": "noop", "plane": "python", "needs": ["pre"]},
    {"id": "post", "task": "collect", "plane": "control", "needs": ["mid"]},
]}
#: Submissions kept in flight by the throughput runs.
IN_FLIGHT = 2000


def start_worker(redis_url: str, concurrency: int, log: Path, *, worker_id: str = "bench-worker",
                 extra: dict[str, str] | None = None, command: str = "worker") -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=redis_url, DUALPLANE_CONCURRENCY=str(concurrency),
               DUALPLANE_READ_BATCH="512", DUALPLANE_WORKER_ID=worker_id, DUALPLANE_WORKER_PORT="0",
               DUALPLANE_LOG_LEVEL="WARNING", **(extra or {}))
    env.pop("S3_ENDPOINT", None)
    return subprocess.Popen([sys.executable, "-m", "dualplane", command], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


class Completions:
    """Counts finished jobs from the job-level status events, through the bridge's event
    subscription, the one a hub reads: on one Redis one pattern subscription to every job's status
    channel; on a cluster (``sharded``) a sharded subscription that follows each job from before
    its submit (its id chosen here) to its end, as a hub following its clients' jobs does.
    (redis-py's ``PubSub.listen`` cost this process 0.7 ms of CPU a 3-node graph, more than the
    submission: the figures would have been the client's.)"""

    def __init__(self, plane: ControlPlane, *, sharded: bool = False) -> None:
        self._plane = plane
        self._sharded = sharded
        self._subscription = plane.bridge.event_subscription(("status",))
        self.finished: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._subscription.subscribe(self._on_message)
        self._task = asyncio.create_task(self._subscription.pump(self._on_message))

    async def submit(self, graph: dict) -> str:
        if not self._sharded:
            return (await self._plane.submit(graph)).job_id
        job_id = uuid.uuid4().hex
        await self._subscription.follow(job_id)
        return (await self._plane.submit({**graph, "id": job_id})).job_id

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if b'"node_id"' in data or b'"status":"succeeded"' not in data:
            return
        job_id = channel.decode().rsplit(":", 1)[1]
        now = time.perf_counter()
        self.finished[job_id] = now
        self._subscription.unfollow(job_id)
        waiter = self._waiters.pop(job_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    def wait(self, job_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if job_id in self.finished:
            future.set_result(self.finished[job_id])
        else:
            self._waiters[job_id] = future
        return future

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._subscription.aclose()


async def throughput(done: Completions, graph: dict, count: int) -> float:
    """Submit ``count`` jobs keeping IN_FLIGHT outstanding; jobs/s from first submit to last completion."""
    ids: list[str] = []
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with slots:
            job_id = await done.submit(graph)
            ids.append(job_id)
            await done.wait(job_id)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (max(done.finished[i] for i in ids) - started)


async def latency(plane: ControlPlane, done: Completions, graph: dict, count: int) -> tuple[list[float], dict]:
    """Sequential round trips (2 ms idle between them), and where each one's time went."""
    samples = []
    hops: dict[str, list[float]] = {}
    for _ in range(count):
        started, wall = time.perf_counter(), time.time()
        job_id = await done.submit(graph)
        returned = time.perf_counter()
        finished = await done.wait(job_id)
        samples.append((finished - started) * 1000)
        # the events' ts are the wall clock of the process that made each event, just before
        # its write went out; submit's return and the completion are this process's clock
        events = await plane.events(job_id)
        for name, ms in hop_times(events, wall, (returned - started) * 1000, (finished - started) * 1000).items():
            hops.setdefault(name, []).append(ms)
        await asyncio.sleep(0.002)  # idle between jobs
    return samples, hops


def hop_times(events: list, wall: float, returned_ms: float | None, finished_ms: float,
              seen: str = "client saw it") -> dict[str, float]:
    """Milliseconds from the submit call to each hop of a job: its first node starting, each
    node's end, the job's end, as the events' ts say; submit's return (when known) and the
    client seeing the end (``seen``), as the client's clock says."""
    marks = {} if returned_ms is None else {"submit returned": returned_ms}
    for event in events:
        at = (event.ts - wall) * 1000
        node = event.node_id
        if event.type == "status" and node is not None and event.status == "running":
            marks.setdefault(f"{node} running", at)
        elif event.type == "status" and node is not None and event.status == "succeeded":
            marks[f"{node} succeeded"] = at
        elif event.type == "status" and node is None and event.status == "succeeded":
            marks["job succeeded"] = at
        elif event.type == "status" and node is None and event.status == "queued":
            marks["queued"] = at
    marks[seen] = finished_ms
    return marks


def hop_table(hops: dict[str, list[float]]) -> str:
    """Each hop's median time since the submit call, and the median step from the hop before."""
    rows, before = [], 0.0
    for name, times in sorted(hops.items(), key=lambda item: statistics.median(item[1])):
        at = statistics.median(times)
        rows.append(f"    {name:<18} at {at:6.2f} ms  (+{at - before:.2f})")
        before = at
    return "\n".join(rows)


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds used so far by each named process."""
    times = {}
    for name, pid in pids.items():
        used = psutil.Process(pid).cpu_times()
        times[name] = used.user + used.system
    return times


async def costed(pids: dict[str, int], client: aioredis.Redis, run: Any, count: int) -> tuple[float, str]:
    """``await run`` (a throughput run of ``count`` jobs), and what it cost per job: each
    process's CPU-ms and Redis's commands. On this shared 2-core VM the rates swing by tens of
    percent from run to run; CPU per job moves far less, so it is the figure to compare."""
    before, commands = cpu_seconds(pids), int((await client.info("stats"))["total_commands_processed"])
    rate = await run
    after = cpu_seconds(pids)
    commands = int((await client.info("stats"))["total_commands_processed"]) - commands
    costs = ", ".join(f"{name} {(after[name] - before[name]) * 1000 / count:.3f}" for name in pids)
    return rate, f"CPU-ms/job: {costs}; redis commands/job {commands / count:.1f}"


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    with start_redis(tmp / "redis") as server:
        settings = Settings(redis_url=server.url, s3_endpoint=None, concurrency=256, read_batch=512)
        worker = start_worker(server.url, args.concurrency, tmp / "worker.log")
        plane = ControlPlane(settings)
        await plane.start()
        client = aioredis.Redis.from_url(server.url)
        done = Completions(plane)
        await done.start()
        redis_pid = int((await client.info("server"))["process_id"])
        pids = {"control plane": os.getpid(), "worker": worker.pid, "redis": redis_pid}
        try:
            await throughput(done, SINGLE, 500)  # warm-up: imports, caches, connections
            for name, graph in (("single-node", SINGLE), ("3-node", THREE)):
                samples, hops = await latency(plane, done, graph, args.latency)
                report(args, f"idle submit->completed latency, {name}: p50 {pct(samples, 50):.2f} ms, "
                             f"p99 {pct(samples, 99):.2f} ms ({args.latency} jobs, one at a time); "
                             f"median hops since the submit call:\n{hop_table(hops)}")
            single, cost = await costed(pids, client, throughput(done, SINGLE, args.jobs), args.jobs)
            report(args, f"single-node no-op python jobs: {single:,.0f} jobs/s ({args.jobs} jobs, "
                         f"{IN_FLIGHT} submissions in flight); {cost}")
            three, cost = await costed(pids, client, throughput(done, THREE, args.graphs), args.graphs)
            report(args, f"3-node control->python->control graphs: {three:,.0f} graphs/s ({args.graphs} graphs, "
                         f"{IN_FLIGHT} in flight); {cost} (per graph)")
        finally:
            await done.stop()
            await client.aclose()
            await plane.stop(1.0)
            worker.terminate()
            worker.wait(30)


async def primaries_stats(urls: list[str]) -> dict[str, tuple[float, int]]:
    """Per primary: CPU seconds used so far (user + sys) and commands processed."""
    stats = {}
    for url in urls:
        client = aioredis.Redis.from_url(url)
        try:
            info = await client.info()
            if info.get("role") == "master":
                stats[url] = (float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                              int(info["total_commands_processed"]))
        finally:
            await client.aclose()
    return stats


async def run_cluster(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dp-bench-cluster-"))
    with start_redis_cluster(tmp / "cluster") as cluster:
        urls = [node.url for node in cluster.nodes]
        for partitions in (int(p) for p in args.partitions.split(",")):
            cluster.flushall()
            topology = {"DUALPLANE_REDIS_CLUSTER": "1", "DUALPLANE_REDIS_PARTITIONS": str(partitions),
                        "DUALPLANE_REDIS_WAIT_REPLICAS": str(args.wait_replicas)}
            settings = Settings(redis_url=cluster.url, redis_cluster=True, redis_partitions=partitions,
                                redis_wait_replicas=args.wait_replicas, s3_endpoint=None, concurrency=256,
                                read_batch=512)
            others = [start_worker(cluster.url, args.concurrency, tmp / f"worker-{partitions}-{i}.log",
                                   worker_id=f"bench-worker-{i}", extra=topology) for i in range(3)]
            others.append(start_worker(cluster.url, 256, tmp / f"control-{partitions}.log", command="control-plane",
                                       extra={**topology, "DUALPLANE_CONTROL_PORT": str(free_port())}))
            plane = ControlPlane(settings)
            await plane.start()
            done = Completions(plane, sharded=True)
            await done.start()
            try:
                await throughput(done, SINGLE, 500)  # warm-up
                before = await primaries_stats(urls)
                single = await throughput(done, SINGLE, args.jobs)
                after = await primaries_stats(urls)
                three = await throughput(done, THREE, args.graphs)
                per_primary = ", ".join(
                    f"{1000 * (after[u][0] - before[u][0]) / args.jobs:.3f} CPU-ms "
                    f"{(after[u][1] - before[u][1]) / args.jobs:.1f} cmds" for u in sorted(after) if u in before)
                report(args, f"cluster, {partitions} partitions, wait_replicas={args.wait_replicas}: "
                             f"{single:,.0f} single-node jobs/s, {three:,.0f} 3-node graphs/s; "
                             f"per single-node job, by primary: {per_primary}")
            finally:
                await done.stop()
                await plane.stop(1.0)
                for process in others:
                    process.terminate()
                for process in others:
                    process.wait(30)


def report(args: argparse.Namespace, line: str) -> None:
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--graphs", type=int, default=6000)
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=512, help="worker concurrency (jobs held at once)")
    parser.add_argument("--cluster", action="store_true", help="on a 3-primary Redis Cluster (see above)")
    parser.add_argument("--partitions", default="1,3,6,12", help="--cluster: the partition counts to run")
    parser.add_argument("--wait-replicas", type=int, default=0, help="--cluster: WAIT for this many replicas")
    args = parser.parse_args()
    if args.cluster:
        print(f"dispatch benchmark on a Redis Cluster: 3 primaries + 3 replicas, 2 control planes, 3 worker "
              f"processes, all on this machine's {os.cpu_count()} CPUs", flush=True)
        run_async(run_cluster(args))
        return
    print(f"dispatch benchmark: 1 control-plane process (in-process submission API, no HTTP), "
          f"1 worker process, local redis-server; {os.cpu_count()} CPUs", flush=True)
    run_async(run(args))


if __name__ == "__main__":
    main()
