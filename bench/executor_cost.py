"""What the LangGraph executor costs a worker, measured in place.

The same worker process twice, in interleaved reps on a fresh redis-server each time:

* ``langgraph``: ``dualplane worker`` as shipped (its :class:`~dualplane.common.langgraph_batch.BatchGraph`);
* ``plain-asyncio``: the same worker with ``BatchGraph.stream`` replaced by plain asyncio tasks
  (one per planned node, the chunks through an ``asyncio.Queue``). FOR COMPARISON ONLY: that
  worker is not dualplane as shipped; everything else in it (consumer, executor, state machine,
  bridge) is the same code.

Each run has one worker process and one producer (this process: a ``ControlPlane`` in-process,
as ``bench/peers``), a single-node ``noop`` graph, and two phases:

* idle: ``--latency`` sequential round trips (submit, ``wait_finished``, the next at once):
  p50 / p99, and each process's CPU-ms per job;
* load: ``--jobs`` jobs submitted one by one, then each waited for in order: jobs/s and CPU-ms
  per job.

    .venv/bin/python bench/executor_cost.py [--reps 3] [--jobs 8000] [--latency 2000]

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psutil

VARIANTS = ("langgraph", "plain-asyncio")
SINGLE = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
PLAIN_FLAG = "--as-plain-asyncio-worker"


async def _plain_stream(self: Any, work: Sequence[tuple[str, Any, str]]) -> AsyncIterator[Any]:
    """``BatchGraph.stream`` without LangGraph: every planned node in an asyncio task, the chunks
    they write yielded in order, the first error raised once the rest are cancelled."""
    if not work:
        return
    chunks: asyncio.Queue[Any] = asyncio.Queue()

    async def one(task: str, run: Any, node_id: str) -> None:
        await self._run_node(task if task in self._tasks else None, run, node_id, chunks.put_nowait)

    tasks = [asyncio.ensure_future(one(*item)) for item in work]
    everything = asyncio.gather(*tasks)
    try:
        while not everything.done() or not chunks.empty():
            if not chunks.empty():
                yield chunks.get_nowait()
                continue
            getter = asyncio.ensure_future(chunks.get())
            await asyncio.wait({getter, everything}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        everything.result()
    finally:
        for task in tasks:
            task.cancel()


def _run_plain_worker() -> int:
    from dualplane.cli import main
    from dualplane.common import langgraph_batch

    langgraph_batch.BatchGraph.stream = _plain_stream
    print("executor_cost: THIS WORKER RUNS PLAIN ASYNCIO IN PLACE OF LANGGRAPH (comparison only)", flush=True)
    return main(["worker"])


def _start_worker(variant: str, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=redis_url, DUALPLANE_CONCURRENCY="512", DUALPLANE_READ_BATCH="512",
               DUALPLANE_WORKER_ID=f"executor-cost-{variant}", DUALPLANE_WORKER_PORT="0",
               DUALPLANE_LOG_LEVEL="WARNING")
    env.pop("S3_ENDPOINT", None)
    command = ([sys.executable, __file__, PLAIN_FLAG] if variant == "plain-asyncio"
               else [sys.executable, "-m", "dualplane", "worker"])
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _measure(variant: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from dualplane.common.settings import Settings
    from dualplane.control_plane import ControlPlane
    from dualplane.devstack.services import start_redis

    server = start_redis(folder / f"redis-{variant}")
    worker = _start_worker(variant, server.url, folder / f"worker-{variant}.log")
    plane = ControlPlane(Settings(redis_url=server.url, s3_endpoint=None, concurrency=256, read_batch=512))
    try:
        await plane.start()
        deadline = time.monotonic() + 60
        while not await plane.router.workers(fresh=True):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"the {variant} worker did not register; see {folder}")
            await asyncio.sleep(0.05)

        async def one() -> None:
            job = await plane.wait_finished((await plane.submit(SINGLE)).job_id, 30)
            if job.status != "succeeded":
                raise SystemExit(f"{variant}: job {job.job_id} is {job.status}")

        for _ in range(300):  # warm-up
            await one()
        process = psutil.Process(worker.pid)
        figures: dict[str, Any] = {}

        samples: list[float] = []
        worker_before, own_before = _cpu_s(process), _own_cpu_s()
        for _ in range(args.latency):
            started = time.perf_counter()
            await one()
            samples.append((time.perf_counter() - started) * 1000)
        figures["idle_p50_ms"] = statistics.median(samples)
        figures["idle_p99_ms"] = sorted(samples)[int(0.99 * (len(samples) - 1))]
        figures["idle_worker_cpu_ms"] = (_cpu_s(process) - worker_before) * 1000 / args.latency
        figures["idle_producer_cpu_ms"] = (_own_cpu_s() - own_before) * 1000 / args.latency

        worker_before, own_before = _cpu_s(process), _own_cpu_s()
        started = time.perf_counter()
        ids = [(await plane.submit(SINGLE)).job_id for _ in range(args.jobs)]
        for job_id in ids:
            await plane.wait_finished(job_id, 60)
        figures["load_jobs_per_s"] = args.jobs / (time.perf_counter() - started)
        figures["load_worker_cpu_ms"] = (_cpu_s(process) - worker_before) * 1000 / args.jobs
        figures["load_producer_cpu_ms"] = (_own_cpu_s() - own_before) * 1000 / args.jobs
        return figures
    finally:
        await plane.stop(1.0)
        worker.terminate()
        worker.wait(20)
        server.stop()


ROWS = (
    ("idle round trip p50, ms", "idle_p50_ms", "{:.2f}"),
    ("idle round trip p99, ms", "idle_p99_ms", "{:.2f}"),
    ("idle: worker CPU-ms per job", "idle_worker_cpu_ms", "{:.3f}"),
    ("idle: producer CPU-ms per job", "idle_producer_cpu_ms", "{:.3f}"),
    ("load: jobs/s", "load_jobs_per_s", "{:,.0f}"),
    ("load: worker CPU-ms per job", "load_worker_cpu_ms", "{:.3f}"),
    ("load: producer CPU-ms per job", "load_producer_cpu_ms", "{:.3f}"),
)


async def _main(args: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="executor-cost-") as tmp:
        for rep in range(args.reps):
            order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                figures = await _measure(variant, args, Path(tmp))
                results[variant].append(figures)
                print(f"rep {rep + 1} {variant}: " + ", ".join(
                    f"{key} {fmt.format(figures[key])}" for _, key, fmt in ROWS), flush=True)
    print(f"\nmedian of {args.reps} reps ({args.latency} idle round trips, {args.jobs} jobs under load; "
          f"{os.cpu_count()} CPUs)\n")
    print("| | " + " | ".join(VARIANTS) + " | plain / langgraph |")
    print("|---|" + "---|" * (len(VARIANTS) + 1))
    for label, key, fmt in ROWS:
        medians = [statistics.median(r[key] for r in results[variant]) for variant in VARIANTS]
        print(f"| {label} | " + " | ".join(fmt.format(m) for m in medians) + f" | {medians[1] / medians[0]:.2f} |")


def main() -> None:
    if sys.argv[1:] == [PLAIN_FLAG]:
        raise SystemExit(_run_plain_worker())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8000)
    parser.add_argument("--latency", type=int, default=2000)
    args = parser.parse_args()
    from dualplane.cli.planes import run_async

    run_async(_main(args))


if __name__ == "__main__":
    main()
