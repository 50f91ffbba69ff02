"""Chaos: workers SIGKILLed and SIGSTOPped/SIGCONTed at random under a stream of multi-node
jobs. Every accepted job ends, no node starts after it succeeded, no artifact is duplicated."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import AsyncIterator

import pytest
import redis as redis_sync
from prometheus_client import CollectorRegistry

from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from tests.helpers import spawn_worker, wait_for_job
from tests.probe import VIOLATIONS, probe_registry, runs

JOBS = 36
WORKERS = 3
CHAOS_EVENTS = 12


def _graph(index: int) -> dict:
    probe = {"task": "probe", "plane": "python"}
    return {"nodes": [
        {"id": "a", **probe, "params": {"seconds": 0.3, "steps": 3}},
        {"id": "b", **probe, "needs": ["a"], "params": {"seconds": 0.6, "steps": 6}},
        {"id": "c", **probe, "needs": ["a"], "params": {"seconds": 0.2, "steps": 2}},
        {"id": "join", "task": "collect", "plane": "control", "needs": ["b", "c"]},
        {"id": "d", **probe, "needs": ["join"], "params": {"seconds": 0.4, "steps": 4}},
    ], "metadata": {"index": index}}


@pytest.fixture
async def chaos_plane(settings: Settings) -> AsyncIterator[tuple[ControlPlane, Settings]]:
    # a job may be hit several times in a row: do not let the delivery limit end it
    local = settings.model_copy(update={"max_deliveries": 20})
    plane = ControlPlane(local, registry=probe_registry(), metrics_registry=CollectorRegistry())
    await plane.start()
    try:
        yield plane, local
    finally:
        await plane.stop(grace_s=0.5)


async def test_jobs_survive_workers_killed_and_paused_at_random(chaos_plane, redis):
    plane, settings = chaos_plane
    records = redis_sync.Redis.from_url(settings.redis_url)
    rng = random.Random(7)
    workers: list[subprocess.Popen[bytes]] = [spawn_worker(settings, f"w{i}", module="tests.probe")
                                              for i in range(WORKERS)]
    done_submitting = asyncio.Event()
    chaos_log: list[str] = []

    async def submit_stream() -> list[str]:
        ids = []
        for index in range(JOBS):
            ids.append((await plane.submit(_graph(index))).job_id)
            await asyncio.sleep(0.25)
        done_submitting.set()
        return ids

    async def chaos() -> None:
        spawned = WORKERS
        for _ in range(CHAOS_EVENTS):
            await asyncio.sleep(rng.uniform(0.4, 1.2))
            slot = rng.randrange(len(workers))
            victim = workers[slot]
            if rng.random() < 0.5:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                chaos_log.append(f"kill {victim.pid}")
                workers[slot] = spawn_worker(settings, f"w{spawned}", module="tests.probe")
                spawned += 1
            else:
                victim.send_signal(signal.SIGSTOP)  # past the 1 s lease: its jobs are reclaimed
                chaos_log.append(f"pause {victim.pid}")
                await asyncio.sleep(rng.uniform(1.5, 3.0))
                victim.send_signal(signal.SIGCONT)

    try:
        submitted, _ = await asyncio.gather(submit_stream(), chaos())
        jobs = [await wait_for_job(plane, job_id, timeout_s=120) for job_id in submitted]
        await asyncio.sleep(1.5)  # resumed workers have had their chance to write late
        settled = [await plane.get_job(job_id) for job_id in submitted]
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    assert len(chaos_log) == CHAOS_EVENTS
    assert [job.status for job in jobs] == ["succeeded"] * JOBS, [(j.id, j.status, j.error) for j in jobs]
    violations = records.lrange(VIOLATIONS, 0, -1)
    assert violations == [], (violations, chaos_log, [r for r in runs(records)
                                                      if any(r[1].encode() in v for v in violations)])
    assert [j.seq for j in settled] == [j.seq for j in jobs]  # nothing written after the end
    store = plane.artifacts
    assert store is not None
    for job in jobs:
        events = await plane.bridge.events(job.id)
        for node in job.graph.nodes:
            assert sum(e.node_id == node.id and e.status == "succeeded" for e in events) == 1, (job.id, node.id)
            if node.task == "probe":
                assert [a.name for a in node.artifacts] == ["out.bin"]
                assert await store.get(node.artifacts[0].key)  # the object behind the reference is there
    ended = {(job, node, pid, attempt) for kind, job, node, pid, attempt in runs(records) if kind == "end"}
    assert len({(job, node) for job, node, _, _ in ended}) == JOBS * 4  # every probe node ran to its end
    for job in jobs:  # and the result each node records is that of a run that ended, not a zombie's
        for node in job.graph.nodes:
            if node.task == "probe":
                assert (job.id, node.id, node.output["pid"], node.output["attempt"]) in ended
    objects = await store.keys("jobs/")
    assert len(objects) == len(set(objects)) == JOBS * 4  # one object per probe node, none extra
