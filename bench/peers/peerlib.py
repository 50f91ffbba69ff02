"""The producer side every system shares: the same phases, the same clock, the same handshake.

Standard library only: it runs in each peer's own virtual environment (and in dualplane's).

Phases, driven by run.py over stdin/stdout (one JSON line each way, prefixed ``@@peer``):

1. warm-up: ping jobs until every worker process has answered (each returns its pid), then
   ``--warmup`` no-op jobs; say ``ready`` and wait for ``go`` (run.py reads the CPU counters);
2. throughput: ``--jobs`` no-op jobs enqueued one by one (each enqueue awaited), then each
   result waited for in order with the library's own result API; jobs/s = jobs / (first
   enqueue → last result); say ``done`` and wait for ``go`` (run.py reads the counters again);
3. latency: ``--latency`` sequential round trips (enqueue, wait for the result, next one at
   once: no idle between them); say ``result`` with the samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PREFIX = "@@peer "
#: Seconds to wait for every worker process to answer a ping.
READY_TIMEOUT_S = 90.0
PING_BATCH = 64
#: Anything a producer wants in the report (counts of retried waits, say): sent with the result.
NOTES: dict[str, Any] = {}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker", "produce"])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="worker processes that must answer before timing")
    parser.add_argument("--index", type=int, default=0, help="this worker's number (worker role)")
    return parser.parse_args(argv)


def say(kind: str, **fields: Any) -> None:
    sys.stdout.write(PREFIX + json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def wait_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' from run.py, got {line!r}")


def drive(args: argparse.Namespace, enqueue: Callable[[], Any], result: Callable[[Any], Any],
          ping: Callable[[], Any]) -> None:
    """The three phases for a library with a blocking API."""
    pids: set[Any] = set()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(pids) < args.workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(pids)} of {args.workers} worker processes answered")
        handles = [ping() for _ in range(PING_BATCH)]
        pids.update(result(handle) for handle in handles)
        pids.discard(None)
    handles = [enqueue() for _ in range(args.warmup)]
    for handle in handles:
        result(handle)
    say("ready", pids=sorted(pids))
    wait_go()
    started = time.perf_counter()
    handles = [enqueue() for _ in range(args.jobs)]
    for handle in handles:
        result(handle)
    elapsed = time.perf_counter() - started
    say("done", elapsed=elapsed)
    wait_go()
    samples = []
    for _ in range(args.latency):
        started = time.perf_counter()
        result(enqueue())
        samples.append((time.perf_counter() - started) * 1000)
    say("result", latency_ms=samples, notes=NOTES)


async def drive_async(args: argparse.Namespace, enqueue: Callable[[], Awaitable[Any]],
                      result: Callable[[Any], Awaitable[Any]], ping: Callable[[], Awaitable[Any]] | None) -> None:
    """The three phases for an asyncio library (``ping`` None: the caller waited for its workers)."""
    pids: set[Any] = set()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while ping is not None and len(pids) < args.workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(pids)} of {args.workers} worker processes answered")
        handles = [await ping() for _ in range(PING_BATCH)]
        pids.update([await result(handle) for handle in handles])
        pids.discard(None)
    handles = [await enqueue() for _ in range(args.warmup)]
    for handle in handles:
        await result(handle)
    say("ready", pids=sorted(pids))
    wait_go()  # blocks the loop on purpose: nothing of ours is to run meanwhile
    started = time.perf_counter()
    handles = [await enqueue() for _ in range(args.jobs)]
    for handle in handles:
        await result(handle)
    elapsed = time.perf_counter() - started
    say("done", elapsed=elapsed)
    wait_go()
    samples = []
    for _ in range(args.latency):
        started = time.perf_counter()
        await result(await enqueue())
        samples.append((time.perf_counter() - started) * 1000)
    say("result", latency_ms=samples, notes=NOTES)
