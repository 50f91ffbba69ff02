"""A worker paused past its lease (SIGSTOP: a GC pause, a frozen VM, a partition) and resumed
after another worker took its job over: every write it tries is rejected, it stops its run,
and no node that succeeded ever runs again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis as redis_sync
from prometheus_client import CollectorRegistry

from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.data_plane import Worker
from tests.helpers import RunningWorker, node, spawn_worker, unique_name, wait_for_job, wait_for_node
from tests.probe import VIOLATIONS, probe_registry, runs


@pytest.fixture
async def probe_plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(settings, registry=probe_registry(), metrics_registry=CollectorRegistry())
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(grace_s=0.5)


async def _attempts(plane: ControlPlane, job_id: str, node_id: str, attempts: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while node(await plane.get_job(job_id), node_id).attempts < attempts:
        assert time.monotonic() < deadline, f"{node_id} never reached attempt {attempts}"
        await asyncio.sleep(0.02)


async def test_a_worker_resumed_after_its_job_was_reclaimed_writes_nothing_and_stops(
    probe_plane: ControlPlane, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PROBE_REDIS_URL", settings.redis_url)  # for the in-process rescuer's probe
    records = redis_sync.Redis.from_url(settings.redis_url)
    paused = spawn_worker(settings, "paused", module="tests.probe")
    rescuer = RunningWorker(Worker(settings.model_copy(update={"worker_id": unique_name("rescuer")}),
                                   registry=probe_registry()))
    graph = {"nodes": [
        {"id": "first", "task": "probe", "plane": "python", "params": {"seconds": 0.05, "steps": 1}},
        {"id": "long", "task": "probe", "plane": "python", "needs": ["first"],
         "params": {"seconds": 6.0, "steps": 60}},
        {"id": "after", "task": "probe", "plane": "python", "needs": ["long"], "params": {"seconds": 0.05}},
    ]}
    try:
        job_id = (await probe_plane.submit(graph)).job_id
        await wait_for_node(probe_plane, job_id, "long", "running", timeout_s=30)
        await asyncio.sleep(0.5)
        paused.send_signal(signal.SIGSTOP)  # past the 1 s lease: its message is up for reclaim
        await rescuer.start()
        await _attempts(probe_plane, job_id, "long", 2, timeout_s=20)
        seq_at_rescue = (await probe_plane.get_job(job_id)).seq
        paused.send_signal(signal.SIGCONT)  # 5 s of its sleep left: it would finish well before the rescuer
        job = await wait_for_job(probe_plane, job_id, timeout_s=40)
        await asyncio.sleep(1.0)  # whatever the resumed worker would still do, it has done by now
        after_end = await probe_plane.get_job(job_id)
    finally:
        paused.send_signal(signal.SIGCONT)
        await rescuer.stop()
        paused.terminate()
        paused.wait(45)  # past the 30 s shutdown grace: only a wedged worker runs out of it

    recorded = runs(records)
    ends = [(n, pid) for kind, j, n, pid, _ in recorded if kind == "end" and j == job_id]
    assert job.status == "succeeded"
    assert records.lrange(VIOLATIONS, 0, -1) == []
    assert [n for n, _ in ends].count("first") == 1  # finished before the pause: never run again
    # the paused worker's attempt at "long" stopped: only the rescuer's ran to its end
    assert [pid for n, pid in ends if n == "long"] == [node(job, "long").output["pid"]]
    assert node(job, "long").output["pid"] != paused.pid
    assert node(job, "long").attempts == 2 and node(job, "after").attempts == 1
    events = await probe_plane.bridge.events(job_id)
    for node_id in ("first", "long", "after"):
        assert sum(e.node_id == node_id and e.status == "succeeded" for e in events) == 1
    # nothing the paused worker sent after it resumed was written: the events that follow the
    # rescue are the rescuer's (attempt 2 of long, then after), and nothing after the end
    late_long = [e for e in events if e.seq > seq_at_rescue and e.node_id == "long" and e.type == "status"]
    assert all(e.attempt in (None, 2) for e in late_long)
    assert after_end.seq == job.seq
    assert [a.name for a in node(job, "long").artifacts] == ["out.bin"]
