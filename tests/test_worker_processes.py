"""`dualplane worker --processes N`: real supervisor and worker processes on a real Redis; and an
idle worker's process, which carries no torch."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.data_plane import Worker
from dualplane.devstack.services import RedisServer, S3Server
from dualplane.ml.device import gpu_may_be_present
from tests.helpers import RunningWorker, descendants, pid_alive, unique_name, wait_for_job

ROOT = Path(__file__).resolve().parent.parent
#: Long enough for a loaded 2-core machine to start a Python worker (imports and all).
START_TIMEOUT_S = 60.0


@pytest.fixture
def settings(redis_server: RedisServer, redis: Any) -> Settings:
    """Settings on the session Redis (flushed by ``redis``); no object store: these tasks need none."""
    return Settings(redis_url=redis_server.url, s3_endpoint=None, lease_s=1.0, read_block_ms=100,
                    shutdown_grace_s=10.0, jwt_secret="test-secret-for-hs256-at-least-32-bytes")


@pytest.fixture
def plane(control_plane: ControlPlane) -> ControlPlane:
    """conftest's control plane, on this module's settings."""
    return control_plane


@pytest.fixture
def spawn(settings: Settings) -> Iterator[Any]:
    """``spawn("--processes", "2", **env)``: ``dualplane worker`` in its own process on the test's
    Redis; whatever is still running at teardown is killed with its children."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **env: str) -> subprocess.Popen[bytes]:
        environ = {**os.environ, "REDIS_URL": settings.redis_url or "", "S3_ENDPOINT": "", "DUALPLANE_LEASE_S": "1",
                   "DUALPLANE_READ_BLOCK_MS": "100", "DUALPLANE_WORKER_PORT": "0",
                   "DUALPLANE_SHUTDOWN_GRACE_S": "10", "DUALPLANE_WORKER_ID": unique_name("w"), **env}
        process = subprocess.Popen([sys.executable, "-m", "dualplane", "worker", *args], env=environ, cwd=ROOT)
        started.append(process)
        return process

    yield start
    for process in started:
        for pid in descendants(process.pid) | {process.pid}:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)


async def manifests(plane: ControlPlane) -> dict[str, dict[str, Any]]:
    return {m["worker_id"]: m for m in map(orjson.loads, await plane.bridge.live_workers())}


async def wait_for_workers(plane: ControlPlane, ids: set[str], *, not_pids: Collection[int] = (),
                           timeout_s: float = START_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Wait until exactly ``ids`` are live (none with a pid of ``not_pids``); their manifests."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = await manifests(plane)
        if set(live) == ids and not {m["pid"] for m in live.values()}.intersection(not_pids):
            return live
        assert time.monotonic() < deadline, f"live workers {sorted(live)}, expected {sorted(ids)}"
        await asyncio.sleep(0.1)


async def wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        assert time.monotonic() < deadline, f"pid {process.pid} still running after {timeout_s} s"
        await asyncio.sleep(0.1)
    return process.returncode


async def test_n_children_register_as_n_workers_with_their_own_ids_and_run_jobs(plane: ControlPlane, spawn):
    supervisor = spawn("--processes", "3", DUALPLANE_WORKER_ID="fleet")
    live = await wait_for_workers(plane, {"fleet-0", "fleet-1", "fleet-2"})
    submitted = [(await plane.submit({"nodes": [{"id": "who", "task": "get_capabilities", "plane": "python"}]})).job_id
                 for _ in range(12)]
    jobs = [await wait_for_job(plane, job_id, timeout_s=30) for job_id in submitted]
    supervisor_maps = Path(f"/proc/{supervisor.pid}/maps").read_text()
    pids = {m["pid"] for m in live.values()}

    assert [job.status for job in jobs] == ["succeeded"] * 12
    assert {(job.graph.nodes[0].output or {}).get("worker_id") for job in jobs} <= set(live)
    assert len(pids) == 3 and supervisor.pid not in pids
    assert pids == descendants(supervisor.pid)
    assert "torch" not in supervisor_maps  # the supervisor runs no worker, let alone torch


async def test_sigterm_stops_every_child_gracefully_and_no_job_is_lost(plane: ControlPlane, settings: Settings,
                                                                      spawn):
    supervisor = spawn("--processes", "2", DUALPLANE_WORKER_ID="drain", DUALPLANE_CONCURRENCY="2")
    await wait_for_workers(plane, {"drain-0", "drain-1"})
    children = descendants(supervisor.pid)
    sleeper = {"nodes": [{"id": "nap", "task": "sleep", "plane": "python", "params": {"seconds": 1.5, "steps": 5}}]}
    submitted = [(await plane.submit(sleeper)).job_id for _ in range(8)]
    await asyncio.wait_for(_until_running(plane, submitted), 30)

    supervisor.send_signal(signal.SIGTERM)
    code = await wait_for_exit(supervisor)
    left = await manifests(plane)
    finished_by_them = [(await plane.get_job(job_id)).status for job_id in submitted]
    # what they did not start waits in the stream for the next worker
    successor = RunningWorker(Worker(settings.model_copy(update={"worker_id": unique_name("next")})))
    await successor.start()
    try:
        jobs = [await wait_for_job(plane, job_id, timeout_s=60) for job_id in submitted]
    finally:
        await successor.stop()

    assert code == 0
    assert not any(pid_alive(pid) for pid in children)
    assert left == {}  # each child took its manifest down as it stopped
    assert "succeeded" in finished_by_them  # the running ones finished within the grace
    assert [job.status for job in jobs] == ["succeeded"] * 8
    assert all(job.graph.nodes[0].attempts == 1 for job in jobs)  # none was cut off and run again


async def _until_running(plane: ControlPlane, job_ids: list[str]) -> None:
    while "running" not in [(await plane.get_job(job_id)).status for job_id in job_ids]:
        await asyncio.sleep(0.05)


async def test_a_killed_child_is_restarted_under_its_own_id(plane: ControlPlane, spawn):
    supervisor = spawn("--processes", "2", DUALPLANE_WORKER_ID="phoenix")
    before = await wait_for_workers(plane, {"phoenix-0", "phoenix-1"})
    victim = before["phoenix-0"]["pid"]

    os.kill(victim, signal.SIGKILL)  # as the kernel's OOM killer would
    after = await wait_for_workers(plane, {"phoenix-0", "phoenix-1"}, not_pids={victim})
    job_id = (await plane.submit({"nodes": [{"id": "n", "task": "noop", "plane": "python"}]})).job_id
    job = await wait_for_job(plane, job_id, timeout_s=30)
    children = descendants(supervisor.pid)
    supervisor.send_signal(signal.SIGTERM)
    code = await wait_for_exit(supervisor)

    assert after["phoenix-0"]["pid"] in children  # the supervisor's new child
    assert after["phoenix-1"]["pid"] == before["phoenix-1"]["pid"]  # its sibling ran on untouched
    assert job.status == "succeeded"
    assert code == 0


async def test_children_stop_gracefully_when_their_supervisor_is_killed(plane: ControlPlane, spawn):
    supervisor = spawn("--processes", "2", DUALPLANE_WORKER_ID="orphan")
    await wait_for_workers(plane, {"orphan-0", "orphan-1"})
    children = descendants(supervisor.pid)

    supervisor.kill()  # as the OOM killer would: it passes nothing on
    await wait_for_exit(supervisor)
    deadline = time.monotonic() + START_TIMEOUT_S
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    outliving = {pid for pid in children if _running(pid)}
    for pid in outliving:  # no longer the supervisor's: the fixture would not find them
        os.kill(pid, signal.SIGKILL)

    assert len(children) == 2
    assert outliving == set()
    assert await manifests(plane) == {}  # each took its manifest down: a graceful stop, not a kill


def _running(pid: int) -> bool:
    """True while ``pid`` runs (an orphan's zombie waits for a reaper this test does not control)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def test_a_child_that_keeps_dying_at_start_stops_the_supervisor_with_an_error(spawn):
    # without REDIS_URL a worker exits 1 as it starts; the supervisor itself needs no Redis
    supervisor = spawn("--processes", "2", REDIS_URL="")
    code = await wait_for_exit(supervisor, timeout_s=120)

    assert code == 1
    assert descendants(supervisor.pid) == set()


async def test_a_crash_loop_exits_1_even_when_a_sibling_dies_of_the_stop_signal(spawn, tmp_path: Path):
    # child 1 hangs at interpreter start (before any handler exists), so the SIGTERM that stops it
    # kills it (143); child 0 crash-loops without REDIS_URL; the supervisor's own code stays 1
    (tmp_path / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('DUALPLANE_WORKER_PROCESSES') == '1' and "
        "os.environ.get('DUALPLANE_WORKER_ID', '').endswith('-1'):\n"
        "    time.sleep(3600)\n")
    supervisor = spawn("--processes", "2", REDIS_URL="", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    code = await wait_for_exit(supervisor, timeout_s=120)

    assert code == 1
    assert descendants(supervisor.pid) == set()


@pytest.mark.skipif(gpu_may_be_present(), reason="a host with a GPU driver asks torch for its devices")
async def test_a_worker_on_a_cpu_host_loads_no_torch_for_tasks_that_need_none(plane: ControlPlane, spawn,
                                                                              s3_server: S3Server):
    # checksum runs in a task thread (whose set-up configures torch) and writes to the store
    worker = spawn(DUALPLANE_WORKER_ID="idle", S3_ENDPOINT=s3_server.endpoint, S3_ACCESS_KEY=s3_server.access_key,
                   S3_SECRET_KEY=s3_server.secret_key, S3_BUCKET=unique_name("idle"))
    (manifest,) = (await wait_for_workers(plane, {"idle"})).values()
    job_id = (await plane.submit({"nodes": [{"id": "n", "task": "checksum", "plane": "python",
                                             "params": {"text": "in a task thread"}}]})).job_id
    job = await wait_for_job(plane, job_id, timeout_s=30)
    maps = Path(f"/proc/{worker.pid}/maps").read_text()

    assert job.status == "succeeded"
    assert manifest["device"] == "cpu" and manifest["vram_total_mb"] is None
    assert "libtorch" not in maps
