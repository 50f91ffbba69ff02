"""Load run over HTTP with outages: submissions, WebSocket watchers, a Redis restart, an S3 outage.

Starts a redis-server (AOF), a SeaweedFS S3, one control plane (``dualplane control-plane``,
uvicorn) and two workers as processes, then:

* ``--jobs`` submissions (1,000) of a two-node graph — ``checksum`` (python plane, writes an
  artifact to S3) then ``collect`` (control plane) — by ``--submitters`` concurrent HTTP
  clients, each submission with an Idempotency-Key and retried with it on 503 or a dropped
  connection, as the Python client does;
* ``--watchers`` WebSocket connections (300) that follow the accepted jobs from ``since=0``
  and check that each job's events arrive gap-free, in order, ending with its final status;
* a restart of Redis (SIGTERM, so the AOF is complete, then a new server on the same port and
  data) once a third of the jobs are accepted, and an S3 outage (killed, restarted on the same
  ports after ``--s3-down`` seconds) at two thirds.

It prints every HTTP status seen (a 503 must carry Retry-After; any other 5xx is a defect),
the WebSocket figures, and the end state of every accepted job: none may be lost.

    .venv/bin/python bench/load.py [--jobs 1000] [--watchers 300]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from dualplane.common.statuses import FINISHED
from dualplane.control_plane.auth import Authenticator
from dualplane.devstack.services import free_port, start_redis, start_s3, terminate

JWT_SECRET = "load-run-secret-of-at-least-thirty-two-bytes"


def graph(index: int) -> dict:
    return {"nodes": [
        {"id": "hash", "task": "checksum", "plane": "python", "params": {"text": f"load run job {index}"}},
        {"id": "done", "task": "collect", "plane": "control", "needs": ["hash"]},
    ]}


class Tally:
    def __init__(self) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.no_retry_after = 0
        self.transport_errors = 0
        self.accepted: list[str] = []
        self.five_hundreds: list[str] = []
        self.ws = collections.Counter()
        self.artifact_reads: collections.Counter[int] = collections.Counter()
        self.ws_problems: list[str] = []


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dualplane", command], env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not healthy")


async def submit_all(base: str, token: str, jobs: int, submitters: int, tally: Tally,
                     accepted: asyncio.Queue[str]) -> None:
    indexes: asyncio.Queue[int] = asyncio.Queue()
    for index in range(jobs):
        indexes.put_nowait(index)

    async def submitter() -> None:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as client:
            while not indexes.empty():
                index = indexes.get_nowait()
                key = uuid.uuid4().hex
                while True:
                    try:
                        response = await client.post("/jobs", json=graph(index), headers={"Idempotency-Key": key})
                    except httpx.TransportError:
                        tally.transport_errors += 1
                        await asyncio.sleep(0.2)
                        continue
                    tally.statuses[response.status_code] += 1
                    if response.status_code in (200, 201):
                        job_id = response.json()["id"]
                        tally.accepted.append(job_id)
                        accepted.put_nowait(job_id)
                        break
                    if response.status_code == 503:
                        retry_after = response.headers.get("retry-after")
                        if retry_after is None:
                            tally.no_retry_after += 1
                        await asyncio.sleep(min(2.0, float(retry_after or 1)))
                        continue
                    if response.status_code >= 500:
                        tally.five_hundreds.append(f"{response.status_code} {response.text[:200]}")
                    await asyncio.sleep(0.2)  # 429 or other: back off, same key

    await asyncio.gather(*(submitter() for _ in range(submitters)))


async def watch_jobs(base: str, token: str, watchers: int, tally: Tally, accepted: asyncio.Queue[str],
                     submitting: asyncio.Event) -> None:
    url = base.replace("http://", "ws://") + f"/ws?token={token}"

    async def follow(ws: object, job_id: str) -> bool:
        await ws.send(json.dumps({"type": "subscribe", "jobId": job_id, "since": 0}))  # type: ignore[attr-defined]
        seqs: list[int] = []
        final = None
        while final is None:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))  # type: ignore[attr-defined]
            tally.ws[message["type"]] += 1
            if message["type"] == "error":
                await asyncio.sleep(0.5)  # e.g. Redis away: subscribe again
                return False
            if message["type"] == "snapshot" and message["job"]["status"] in FINISHED and message["seq"] == 0:
                final = message["job"]["status"]
            elif message["type"] == "update" and message["jobId"] == job_id:
                seqs.append(message["seq"])
                event = message["event"]
                if event["type"] == "status" and not event.get("node_id") and event.get("status") in FINISHED:
                    final = event["status"]
        await ws.send(json.dumps({"type": "unsubscribe", "jobId": job_id}))  # type: ignore[attr-defined]
        if seqs != list(range(1, len(seqs) + 1)):
            tally.ws_problems.append(f"{job_id}: seqs {seqs[:5]}… not gap-free from 1")
        tally.ws["jobs followed"] += 1
        return True

    async def watcher() -> None:
        while True:
            try:
                async with ws_connect(url, proxy=None, max_queue=None) as ws:
                    tally.ws["connections"] += 1
                    while True:
                        try:
                            job_id = accepted.get_nowait()
                        except asyncio.QueueEmpty:
                            if not submitting.is_set():
                                return
                            await asyncio.sleep(0.05)
                            continue
                        while not await follow(ws, job_id):
                            pass
            except (ConnectionClosed, OSError) as exc:
                tally.ws["reconnects"] += 1
                tally.ws_problems.append(f"connection lost: {exc!r}"[:200])
                await asyncio.sleep(0.5)

    await asyncio.gather(*(watcher() for _ in range(watchers)))


async def read_artifacts(base: str, token: str, tally: Tally, running: asyncio.Event) -> None:
    """Presigned links of finished jobs, asked for all along: they need S3, so its outage shows."""
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while running.is_set():
            if len(tally.accepted) > 10:
                try:
                    response = await client.get(f"/jobs/{tally.accepted[len(tally.accepted) // 2]}/artifacts")
                    tally.artifact_reads[response.status_code] += 1
                    if response.status_code == 503 and "retry-after" not in response.headers:
                        tally.no_retry_after += 1
                    elif response.status_code >= 500 and response.status_code != 503:
                        tally.five_hundreds.append(f"artifacts {response.status_code} {response.text[:200]}")
                except httpx.TransportError:
                    tally.transport_errors += 1
            await asyncio.sleep(0.05)


async def retried_nodes(base: str, token: str, job_ids: list[str]) -> int:
    """Node attempts that were retried (a store outage reaches nodes as transient errors)."""
    retried = 0
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for job_id in job_ids:
            events = (await client.get(f"/jobs/{job_id}/events")).json()
            retried += sum(1 for e in events if (e.get("message") or "").startswith("retrying"))
    return retried


async def outages(tally: Tally, jobs: int, redis_box: list, s3_box: list, s3_down_s: float, log: list[str]) -> None:
    while len(tally.accepted) < jobs // 3:
        await asyncio.sleep(0.05)
    server = redis_box[0]
    started = time.monotonic()
    server.stop()  # SIGTERM: the AOF is flushed on the way down
    redis_box[0] = await asyncio.to_thread(start_redis, server.data_dir, appendonly=True, port=server.port)
    log.append(f"redis restarted at {len(tally.accepted)} accepted jobs (down {time.monotonic() - started:.2f} s)")
    while len(tally.accepted) < 2 * jobs // 3:
        await asyncio.sleep(0.05)
    s3 = s3_box[0]
    s3.process.kill()
    s3.process.wait()
    log.append(f"s3 killed at {len(tally.accepted)} accepted jobs")
    await asyncio.sleep(s3_down_s)
    s3_box[0] = await asyncio.to_thread(start_s3, s3.data_dir, access_key=s3.access_key,
                                        secret_key=s3.secret_key, ports=s3.ports)
    log.append(f"s3 back after {s3_down_s:.1f} s")


async def settle(base: str, token: str, job_ids: list[str], timeout_s: float) -> collections.Counter[str]:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while time.monotonic() < deadline:
            pending = [j for j in job_ids if statuses.get(j) not in FINISHED]
            if not pending:
                break
            for job_id in pending:
                try:
                    response = await client.get(f"/jobs/{job_id}")
                except httpx.TransportError:
                    continue
                statuses[job_id] = response.json()["status"] if response.status_code == 200 else \
                    f"http {response.status_code}"
            await asyncio.sleep(0.5)
    return collections.Counter(statuses.get(j, "unknown") for j in job_ids)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis_box = [start_redis(root / "redis", appendonly=True)]
        s3_box = [start_s3(root / "s3")]
        control_port = free_port()
        env = dict(os.environ, REDIS_URL=redis_box[0].url, S3_ENDPOINT=s3_box[0].endpoint,
                   S3_ACCESS_KEY=s3_box[0].access_key, S3_SECRET_KEY=s3_box[0].secret_key,
                   DUALPLANE_JWT_SECRET=JWT_SECRET, DUALPLANE_LOG_LEVEL="WARNING", DUALPLANE_LEASE_S="5",
                   DUALPLANE_SUBMIT_RATE_PER_MIN="0", DUALPLANE_CONCURRENCY="8",
                   DUALPLANE_CONTROL_HOST="127.0.0.1", DUALPLANE_CONTROL_PORT=str(control_port))
        processes = [spawn("control-plane", env, root / "control.log")]
        for i in range(2):
            processes.append(spawn("worker", {**env, "DUALPLANE_WORKER_ID": f"load-{i}",
                                              "DUALPLANE_WORKER_PORT": str(free_port())}, root / f"worker-{i}.log"))
        base = f"http://127.0.0.1:{control_port}"
        token = Authenticator(algorithm="HS256", secret=JWT_SECRET).mint("load", "user", ttl_s=3600)
        tally, log = Tally(), []
        try:
            await wait_healthy(f"{base}/health")
            await asyncio.sleep(1.0)  # workers announced
            accepted: asyncio.Queue[str] = asyncio.Queue()
            submitting = asyncio.Event()
            submitting.set()
            started = time.monotonic()
            watching = asyncio.create_task(watch_jobs(base, token, args.watchers, tally, accepted, submitting))
            chaos = asyncio.create_task(outages(tally, args.jobs, redis_box, s3_box, args.s3_down, log))
            reading = asyncio.create_task(read_artifacts(base, token, tally, submitting))
            await submit_all(base, token, args.jobs, args.submitters, tally, accepted)
            submitted_s = time.monotonic() - started
            await chaos
            submitting.clear()
            end_state = await settle(base, token, tally.accepted, timeout_s=180)
            await asyncio.wait_for(watching, 120)
            await reading
            total_s = time.monotonic() - started
            retries = await retried_nodes(base, token, tally.accepted)
        finally:
            for proc in processes:
                terminate(proc, 30)
            s3_box[0].stop()
            redis_box[0].stop()
        failures = [line for line in (root / "control.log").read_text(errors="replace").splitlines()
                    if "Traceback" in line or '"level":"critical"' in line][:5]
    print(f"{args.jobs} submissions by {args.submitters} HTTP clients, {args.watchers} WebSocket watchers; "
          f"submitted in {submitted_s:.1f} s, all settled in {total_s:.1f} s")
    for line in log:
        print(f"  {line}")
    print("HTTP answers to POST /jobs: " + ", ".join(f"{code}: {n}" for code, n in sorted(tally.statuses.items())))
    print(f"  503 without Retry-After: {tally.no_retry_after}; other 5xx: {len(tally.five_hundreds)}; "
          f"dropped connections: {tally.transport_errors}")
    for line in tally.five_hundreds[:5]:
        print(f"    {line}")
    print("HTTP answers to GET /jobs/{id}/artifacts meanwhile: "
          + ", ".join(f"{code}: {n}" for code, n in sorted(tally.artifact_reads.items())))
    print(f"accepted jobs: {len(tally.accepted)} ({len(set(tally.accepted))} distinct); "
          "end states: " + ", ".join(f"{s}: {n}" for s, n in end_state.most_common())
          + f"; node attempts retried: {retries}")
    print("WebSocket: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.ws.items())))
    print(f"  gap or order problems: {sum('seqs' in p for p in tally.ws_problems)}; "
          f"lost connections: {sum('connection lost' in p for p in tally.ws_problems)}")
    for line in failures:
        print(f"  control-plane log: {line[:200]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--submitters", type=int, default=32)
    parser.add_argument("--watchers", type=int, default=300)
    parser.add_argument("--s3-down", type=float, default=4.0, help="seconds S3 stays down (default 4)")
    asyncio.run(main(parser.parse_args()))
