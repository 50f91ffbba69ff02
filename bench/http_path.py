"""HTTP path benchmark: ``POST /jobs`` and ``POST /jobs/batch`` through uvicorn, against the
in-process submission rate.

Starts a redis-server, one control plane (``dualplane control-plane``: uvicorn, one process, the
shipped log level unless ``--log-level``) and one worker (``dualplane worker``) as processes,
mints a token with the plane's secret, and measures:

* ``POST /jobs`` of a no-op one-node graph at 1, 8 and 64 connections (``--connections``):
  req/s, p50, p99, with ``wrk`` (Debian package ``wrk``: ``apt-get install wrk``); without
  ``wrk`` on the PATH, with an httpx async client in this process (``--client httpx``: it
  costs more CPU per request than wrk, on the same cores as the server);
* ``POST /jobs/batch`` of ``--batch`` graphs a request at 8 connections: jobs/s;
* the idle round trip submit -> completed as a client that wants the result does it: one
  ``POST /jobs?wait=30`` at a time on a kept-alive connection (the answer comes when the job has
  finished; checked ``succeeded``): p50, p99;
* the in-process rate for comparison: ``ControlPlane.submit`` of the same graph in this process,
  64 in flight (as ``bench/dispatch.py`` submits), on the same Redis while the worker drains.

    .venv/bin/python bench/http_path.py [--seconds 5] [--connections 1,8,64] [--batch 50]

Prints a table; asserts nothing about speed. Everything shares this machine's cores (wrk too),
so figures are indicative; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aioredis
from dispatch import hop_table, hop_times  # bench/dispatch.py
from load import spawn, wait_healthy  # bench/load.py

from dualplane.cli.planes import run_async
from dualplane.common.bridge.keys import Keys
from dualplane.common.models import Event
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.auth import Authenticator
from dualplane.devstack.services import free_port, start_redis, terminate

JWT_SECRET = "http-bench-secret-of-at-least-thirty-two-bytes"
SINGLE = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
#: ``ControlPlane.submit`` calls kept in flight by the in-process run.
IN_PROCESS_IN_FLIGHT = 64

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Load:
    """One load run: requests answered 2xx per second and latency percentiles (ms)."""

    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk_load(url: str, token: str, body: bytes, connections: int, seconds: float, tmp: Path) -> Load:
    script = tmp / "post.lua"
    lua_body = "[==[" + body.decode() + "]==]"
    script.write_text(WRK_SCRIPT.replace("{body}", lua_body).replace("{token}", token))
    threads = min(connections, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                          "--timeout", "10s", "-s", str(script), url], check=False, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    match = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk said:\n{out.stdout}")
    requests, duration_us, status_errors, socket_errors, p50, p99, _ = (int(g) for g in match.groups())
    ok = requests - status_errors
    return Load(rate=ok / (duration_us / 1e6), p50_ms=p50 / 1000, p99_ms=p99 / 1000,
                errors=status_errors + socket_errors)


async def httpx_load(url: str, token: str, body: bytes, connections: int, seconds: float) -> Load:
    samples: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post(url, content=body)
                if response.is_success:
                    samples.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return Load(rate=len(samples) / elapsed, p50_ms=pct(samples, 50), p99_ms=pct(samples, 99), errors=errors)


async def round_trips(base: str, token: str, count: int) -> tuple[list[float], int, dict[str, list[float]]]:
    """``POST /jobs?wait=30`` one at a time; ms from sending to the finished job's answer, and
    where each one's time went (its events' ts, read afterwards through the API)."""
    samples: list[float] = []
    wrong = 0
    timed: list[tuple[str, float, float]] = []
    body = orjson.dumps(SINGLE)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        for _ in range(count):
            started, wall = time.perf_counter(), time.time()
            response = await client.post("/jobs", params={"wait": 30}, content=body)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code == 200 and response.json()["status"] == "succeeded":
                samples.append(elapsed)
                timed.append((response.json()["id"], wall, elapsed))
            else:
                wrong += 1
            await asyncio.sleep(0.002)  # idle between jobs
        hops: dict[str, list[float]] = {}
        for job_id, wall, elapsed in timed:
            events = [Event.model_validate(e) for e in (await client.get(f"/jobs/{job_id}/events")).json()]
            for name, ms in hop_times(events, wall, None, elapsed, seen="answer received").items():
                hops.setdefault(name, []).append(ms)
    return samples, wrong, hops


async def drained(redis_url: str, limit_s: float = 300.0) -> float:
    """Wait until no job is unfinished (the load runs leave a backlog the worker drains);
    seconds waited."""
    started = time.monotonic()
    client = aioredis.Redis.from_url(redis_url)
    try:
        while await client.zcard(Keys(Settings().key_prefix).active_jobs(0)) and time.monotonic() - started < limit_s:
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    return time.monotonic() - started


async def in_process_rate(redis_url: str, seconds: float) -> float:
    """``ControlPlane.submit`` in a loop, IN_PROCESS_IN_FLIGHT at once: submissions/s."""
    plane = ControlPlane(Settings(redis_url=redis_url, s3_endpoint=None))
    await plane.start()
    try:
        done = 0
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await plane.submit(SINGLE)
                done += 1

        for _ in range(200):  # warm-up: imports, caches, connections
            await plane.submit(SINGLE)
        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(IN_PROCESS_IN_FLIGHT)))
        return done / (time.perf_counter() - started)
    finally:
        await plane.stop(1.0)


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dp-http-bench-"))
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    rows: list[tuple[str, str]] = []
    with start_redis(tmp / "redis") as server:
        port = free_port()
        env = dict(os.environ, REDIS_URL=server.url, DUALPLANE_JWT_SECRET=JWT_SECRET,
                   DUALPLANE_SUBMIT_RATE_PER_MIN="0", DUALPLANE_CONTROL_HOST="127.0.0.1",
                   DUALPLANE_CONTROL_PORT=str(port))
        env.pop("S3_ENDPOINT", None)
        for name in ("DUALPLANE_LOG_LEVEL", "DUALPLANE_ACCESS_LOG"):
            env.pop(name, None)  # the shipped defaults, unless asked
        if args.log_level:
            env["DUALPLANE_LOG_LEVEL"] = args.log_level
        worker_env = dict(env, DUALPLANE_CONCURRENCY=str(args.concurrency), DUALPLANE_READ_BATCH="512",
                          DUALPLANE_WORKER_ID="http-bench-worker", DUALPLANE_WORKER_PORT="0",
                          DUALPLANE_LOG_LEVEL="WARNING")
        processes = [spawn("control-plane", env, tmp / "control.log"),
                     spawn("worker", worker_env, tmp / "worker.log")]
        base = f"http://127.0.0.1:{port}"
        token = Authenticator(algorithm="HS256", secret=JWT_SECRET).mint("bench", "user", ttl_s=3600)
        single = orjson.dumps(SINGLE)
        batch = orjson.dumps({"graphs": [SINGLE] * args.batch})

        async def load(path: str, body: bytes, connections: int) -> Load:
            if use_wrk:
                return await asyncio.to_thread(wrk_load, base + path, token, body, connections, args.seconds, tmp)
            return await httpx_load(base + path, token, body, connections, args.seconds)

        try:
            await wait_healthy(f"{base}/health")
            await asyncio.sleep(1.0)  # the worker announced
            await load("/jobs", single, 8)  # warm-up
            for connections in args.connections:
                result = await load("/jobs", single, connections)
                rows.append((f"POST /jobs, {connections} connection{'s' if connections > 1 else ''}",
                             f"{result.rate:8,.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
                             + (f"  ({result.errors} errors)" if result.errors else "")))
                if connections == max(args.connections):
                    http_64 = result.rate
            result = await load("/jobs/batch", batch, 8)
            rows.append((f"POST /jobs/batch ({args.batch} graphs), 8 connections",
                         f"{result.rate * args.batch:8,.0f} jobs/s  ({result.rate:,.0f} req/s, "
                         f"p50 {result.p50_ms:.2f} ms)" + (f"  ({result.errors} errors)" if result.errors else "")))
            drained_s = await drained(server.url)  # idle means no backlog ahead of the round trips
            samples, wrong, hops = await round_trips(base, token, args.round_trips)
            rows.append(("idle submit->completed, POST /jobs?wait=30",
                         f"p50 {pct(samples, 50):.2f} ms  p99 {pct(samples, 99):.2f} ms  ({len(samples)} jobs"
                         + (f", {wrong} not succeeded" if wrong else "")
                         + f"; started {drained_s:.1f} s after the load, once no job was unfinished)"))
            rows.append(("  median hops since the request was sent", "\n" + hop_table(hops)))
            in_process = await in_process_rate(server.url, args.seconds)
            rows.append((f"in process: ControlPlane.submit, {IN_PROCESS_IN_FLIGHT} in flight",
                         (f"{in_process:8,.0f} submits/s  (HTTP at {max(args.connections)} connections: "
                          f"{100 * http_64 / in_process:.0f} %)")))
        finally:
            for proc in processes:
                terminate(proc, 30)
        failures = [line for line in (tmp / "control.log").read_text(errors="replace").splitlines()
                    if "Traceback" in line or '"level":"error"' in line or '"level":"critical"' in line][:5]
    client = "wrk" if use_wrk else "httpx (in this process)"
    print(f"HTTP benchmark: 1 control plane (uvicorn), 1 worker, local redis-server, load by {client}, "
          f"{args.seconds} s a run, control-plane log level {args.log_level or 'as shipped'}; "
          f"{os.cpu_count()} CPUs")
    width = max(len(name) for name, _ in rows)
    for name, figures in rows:
        print(f"  {name:<{width}}  {figures}")
    for line in failures:
        print(f"  control-plane log: {line[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run")
    parser.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 64])
    parser.add_argument("--batch", type=int, default=50, help="graphs in one POST /jobs/batch")
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=512, help="worker concurrency")
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto",
                        help="load generator (auto: wrk when on the PATH)")
    parser.add_argument("--log-level", help="the control plane's DUALPLANE_LOG_LEVEL (default: as shipped)")
    run_async(run(parser.parse_args()))


if __name__ == "__main__":
    main()
