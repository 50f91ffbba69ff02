"""The two writes that cannot be one script on a cluster: the dead-letter stream is one key of its
own, so dead-lettering (the entry, then the job's side) and replay (the job's side, then the
entry's deletion) are two steps each. A process that dies between them leaves a state the next
one finishes from: nothing is lost, no job fails or runs twice. Each test runs the two steps in
a process of their own (``tests.probe``, frozen once the first step has returned), SIGKILLs it
there, and lets the rest of the system take over."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from dualplane.common.bridge import Message
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from tests.helpers import RunningWorker, node, spawn_worker, unique_name, wait_for_dead_letters, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.both_topologies]

CYCLE = [{"id": "a", "task": "noop", "plane": "python", "needs": ["b"]},
         {"id": "b", "task": "noop", "plane": "python", "needs": ["a"]}]


async def test_a_consumer_killed_after_parking_a_message_leaves_it_to_be_dead_lettered_again_and_the_job_fails_once(
        control_plane: ControlPlane, worker_factory, redis, settings: Settings, tmp_path: Path):
    keys = control_plane.bridge.keys
    # a known job waiting where no worker reads, and a broken handoff for it on the job's data stream
    job_id = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python",
                                                     "pool": "gpu"}]})).job_id
    stream = keys.stream_for_job("python:default", job_id)
    await control_plane.bridge.ensure_group(stream)
    await redis.xadd(stream, {"m": orjson.dumps({"job_id": job_id, "handoff_seq": 1, "graph": {"nodes": CYCLE}})})
    # a worker process reads it, parks it (step one), and is killed before the job's side (step two)
    first_entry = await _killed_after(settings, tmp_path, "park")
    between = await control_plane.get_job(job_id)

    await worker_factory()  # reclaims the dead consumer's message after its lease
    failed = await wait_for_job(control_plane, job_id)
    dead = await wait_for_dead_letters(control_plane, 2)
    first_replay = await control_plane.bridge.replay_dead_letter(first_entry)
    events = await control_plane.bridge.events(job_id)

    assert between.status == "queued"  # the crash left the job as it was: the message is still pending
    assert failed.status == "failed" and "dependency cycle" in failed.error
    assert [d["job"] for d in dead] == [job_id, job_id]  # the first entry stays, as a record
    assert sum(1 for e in events if e.node_id is None and e.status == "failed") == 1
    assert first_replay == ("not-failed-by-it", None)  # the entry that did not fail it revives nothing
    assert await control_plane.bridge.pending_count(stream) == 0


async def test_a_replay_killed_before_dropping_its_dead_letter_runs_the_job_once(
        api, control_plane: ControlPlane, worker: RunningWorker, redis, settings: Settings, tmp_path: Path):
    admin = api("root", role="admin")
    keys = control_plane.bridge.keys
    # a job whose only message was dead-lettered (as the delivery limit does) while its graph is fine
    job_id = (await control_plane.submit({"nodes": [{"id": "a", "task": "checksum", "plane": "python",
                                                     "pool": "gpu", "params": {"text": "x"}}]})).job_id
    gpu = keys.stream_for_job("python:gpu", job_id)
    await control_plane.bridge.ensure_group(gpu)
    ((_, entries),) = await redis.xreadgroup("workers", "ghost", {gpu: ">"}, count=1)
    await control_plane.bridge.dead_letter(Message(gpu, entries[0][0].decode(), entries[0][1]),
                                           "delivered 6 times (limit 5)", job_id)
    (letter,) = await wait_for_dead_letters(control_plane, 1)
    # step one of a replay (the job revived, its message back), then the process is killed: the entry stays
    outcome, _ = await _killed_after(settings, tmp_path, "requeue_dead_letter", "replay", letter["entry"])
    still_listed = await control_plane.bridge.dead_letters()
    # the message is back on the gpu pool, which a worker now serves
    gpu_worker = await _gpu_worker(control_plane)
    try:
        job = await wait_for_job(control_plane, job_id)
        again = await admin.post(f"/admin/dead-letters/{letter['entry']}/replay")
        await asyncio.sleep(0.5)  # a second run would show meanwhile
        events = await control_plane.bridge.events(job_id)
    finally:
        await gpu_worker.stop()

    assert outcome == "replayed" and [d["entry"] for d in still_listed] == [letter["entry"]]
    assert job.status == "succeeded" and node(job, "a").attempts == 1
    assert again.status_code == 409 and again.json()["why"] == "not-failed-by-it"  # it revives nothing
    assert sum(1 for e in events if e.node_id == "a" and e.status == "succeeded") == 1
    assert (await admin.delete(f"/admin/dead-letters/{letter['entry']}")).status_code in (200, 204)


async def _gpu_worker(plane: ControlPlane) -> RunningWorker:
    from dualplane.data_plane import Worker
    from tests.helpers import unique_name

    running = RunningWorker(Worker(plane.settings.model_copy(update={"worker_id": unique_name("gpu"),
                                                                     "pool": "gpu"})))
    await running.start()
    return running


async def _killed_after(settings: Settings, tmp_path: Path, step: str, *args: str, timeout_s: float = 20.0) -> Any:
    """Run ``tests.probe`` (a worker, or ``args``) until its bridge's ``step`` has returned, SIGKILL
    it there, before the step that follows; what the step returned."""
    report = tmp_path / f"{step}.json"
    process = spawn_worker(settings, unique_name("doomed"), module="tests.probe", args=args,
                           extra={"PROBE_FREEZE_AFTER": step, "PROBE_FROZEN_FILE": str(report)})
    try:
        for _ in range(int(timeout_s / 0.05)):
            if report.exists() or process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert report.exists(), f"the process did not reach the end of {step} (exit code {process.poll()})"
    finally:
        process.kill()
        process.wait(timeout=10)
    return json.loads(report.read_text())
