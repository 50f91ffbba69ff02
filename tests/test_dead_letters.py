"""Dead letters an admin can act on: listed with their reason, job, source stream and time; a
replay puts the message back and the job completes once the cause is gone (a worker that kept
dying); a message that is still poison is dead-lettered again; rm discards. Admins only. The
same through `dualplane dead-letters` against a served control plane."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from dualplane.control_plane import ControlPlane
from tests.helpers import RunningWorker, node, spawn_worker, wait_for_dead_letters, wait_for_job, wait_for_node
from tests.test_client import Served, cli_env, mint, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.both_topologies]


async def _poisoned_job(plane: ControlPlane, redis) -> str:
    """A job whose handoff message carries a graph that cannot run (a cycle), dead-lettered by
    the worker that reads it; the job itself waits where no worker reads."""
    job_id = (await plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python", "pool": "gpu"}]})).job_id
    cycle = [{"id": "a", "task": "noop", "plane": "python", "needs": ["b"]},
             {"id": "b", "task": "noop", "plane": "python", "needs": ["a"]}]
    await redis.xadd(plane.bridge.keys.stream_for_job("python:default", job_id),
                     {"m": orjson.dumps({"job_id": job_id, "handoff_seq": 1, "graph": {"nodes": cycle}})})
    await wait_for_dead_letters(plane, 1)
    return job_id


async def test_a_dead_letter_is_listed_for_admins_and_its_replay_completes_the_job(
    api, control_plane: ControlPlane, settings, worker_factory
):
    admin, alice = api("root", role="admin"), api("alice")
    victim = spawn_worker(settings, "victim")  # dies mid-node, as an out-of-memory kill would
    try:
        graph = {"nodes": [
            {"id": "first", "task": "checksum", "plane": "python", "params": {"text": "done once"}},
            {"id": "long", "task": "sleep", "plane": "python", "needs": ["first"],
             "params": {"seconds": 1.0, "steps": 10}},
            {"id": "end", "task": "collect", "plane": "control", "needs": ["long"]},
        ]}
        job_id = (await alice.post("/jobs", json=graph)).json()["id"]
        await wait_for_node(control_plane, job_id, "long", "running", timeout_s=30)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
    finally:
        if victim.poll() is None:
            victim.kill()
    # its successor reclaims the message past the delivery limit: dead-lettered, the job failed
    await worker_factory(max_deliveries=1)
    failed = await wait_for_job(control_plane, job_id)
    listed = await admin.get("/admin/dead-letters")
    (letter,) = listed.json()["dead_letters"]
    forbidden = [await alice.get("/admin/dead-letters"), await alice.get(f"/admin/dead-letters/{letter['id']}"),
                 await alice.post(f"/admin/dead-letters/{letter['id']}/replay"),
                 await alice.delete(f"/admin/dead-letters/{letter['id']}")]
    shown = (await admin.get(f"/admin/dead-letters/{letter['id']}")).json()

    replayed = await admin.post(f"/admin/dead-letters/{letter['id']}/replay")
    job = await wait_for_job(control_plane, job_id)
    again = await admin.post(f"/admin/dead-letters/{letter['id']}/replay")
    await asyncio.sleep(0.5)  # a second run of the job would show meanwhile
    events = (await alice.get(f"/jobs/{job_id}/events")).json()

    assert failed.status == "failed" and failed.error.startswith("dead-lettered: delivered 2 times (limit 1)")
    assert listed.status_code == 200 and listed.json()["next_cursor"] is None
    assert letter["job"] == job_id and letter["reason"].startswith("delivered 2 times (limit 1)")
    assert letter["stream"] == control_plane.bridge.keys.stream_for_job("python:default", job_id)
    assert letter["message_id"] and abs(letter["ts"] - time.time()) < 120
    assert [r.status_code for r in forbidden] == [403] * 4
    assert shown["message"]["m"]["job_id"] == job_id and shown["reason"] == letter["reason"]
    assert replayed.status_code == 200 and replayed.json()["job"] == job_id
    assert job.status == "succeeded" and job.error is None
    assert node(job, "first").attempts == 1  # succeeded before the crash: not run again
    assert again.status_code == 404  # the dead letter went with the first replay: nothing runs twice
    assert (await admin.get("/admin/dead-letters")).json()["dead_letters"] == []
    assert sum(1 for e in events if e["node_id"] == "end" and e["status"] == "succeeded") == 1
    assert any(e["status"] == "queued" and "replayed from dead letter" in (e["message"] or "") for e in events)
    assert await control_plane.bridge.pending_count(letter["stream"]) == 0


async def test_a_replayed_poison_message_is_dead_lettered_again_and_rm_discards_it(
    api, control_plane: ControlPlane, worker: RunningWorker, redis
):
    admin = api("root", role="admin")
    job_id = await _poisoned_job(control_plane, redis)
    (first,) = (await admin.get("/admin/dead-letters")).json()["dead_letters"]

    replayed = await admin.post(f"/admin/dead-letters/{first['id']}/replay")
    (second,) = await wait_for_dead_letters(control_plane, 1)
    job = await wait_for_job(control_plane, job_id)
    removed = await admin.delete(f"/admin/dead-letters/{second['entry']}")
    after = (await admin.get("/admin/dead-letters")).json()["dead_letters"]
    removed_again = await admin.delete(f"/admin/dead-letters/{second['entry']}")
    bad_ids = [await admin.get("/admin/dead-letters/not-an-id"), await admin.post("/admin/dead-letters/1-2/replay")]

    assert "dependency cycle" in first["reason"] and first["job"] == job_id
    assert replayed.status_code == 200
    assert second["entry"] != first["id"] and second["reason"] == first["reason"] and second["job"] == job_id
    assert job.status == "failed" and "dependency cycle" in job.error
    assert removed.status_code == 204 and after == [] and removed_again.status_code == 404
    assert [r.status_code for r in bad_ids] == [404, 404]
    assert worker.worker.consumer.failure is None


async def test_a_dead_letter_of_a_job_that_ended_otherwise_is_not_replayed(
    api, control_plane: ControlPlane, worker: RunningWorker, redis
):
    admin = api("root", role="admin")
    job_id = await _poisoned_job(control_plane, redis)
    (letter,) = (await admin.get("/admin/dead-letters")).json()["dead_letters"]
    await control_plane.purge(job_id)

    refused = await admin.post(f"/admin/dead-letters/{letter['id']}/replay")

    assert refused.status_code == 409 and refused.json()["why"] == "job-gone"
    assert len((await admin.get("/admin/dead-letters")).json()["dead_letters"]) == 1  # still there to discard


@pytest.fixture
async def served(settings, control_plane: ControlPlane, worker: RunningWorker) -> AsyncIterator[Served]:
    served = Served(settings, control_plane)
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


async def test_cli_lists_shows_replays_and_removes_dead_letters(served: Served, control_plane: ControlPlane, redis):
    job_id = await _poisoned_job(control_plane, redis)
    env = cli_env(DUALPLANE_URL=served.url, DUALPLANE_TOKEN=mint("root", "admin"))

    ls_code, ls_out, _ = await run_cli("dead-letters", "ls", env=env)
    letter_id = ls_out.splitlines()[1].split()[0]
    show_code, show_out, _ = await run_cli("dead-letters", "show", letter_id, env=env)
    replay_code, replay_out, _ = await run_cli("dead-letters", "replay", letter_id, env=env)
    (again,) = await wait_for_dead_letters(control_plane, 1)  # still poison
    rm_code, rm_out, _ = await run_cli("dead-letters", "rm", again["entry"], env=env)
    empty_code, empty_out, _ = await run_cli("dead-letters", "ls", env=env)
    user_code, _, user_err = await run_cli("dead-letters", "ls", env={**env, "DUALPLANE_TOKEN": mint("alice")})

    assert ls_code == 0 and ls_out.split()[:5] == ["ID", "TIME", "JOB", "STREAM", "REASON"]
    assert job_id in ls_out.splitlines()[1] and "dependency cycle" in ls_out
    assert show_code == 0 and json.loads(show_out)["job"] == job_id
    assert replay_code == 0 and replay_out.startswith(f"replayed {letter_id} onto ") and job_id in replay_out
    assert again["entry"] != letter_id
    assert rm_code == 0 and rm_out.strip() == f"discarded {again['entry']}"
    assert empty_code == 0 and empty_out.strip() == "no dead letters"
    assert user_code == 1 and "403" in user_err
