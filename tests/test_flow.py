"""End-to-end job flow across both planes on a real Redis and a real S3 store."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from dualplane.control_plane import ControlPlane
from tests.helpers import RunningWorker, node, wait_for_job

pytestmark = pytest.mark.both_topologies


def cross_plane_graph() -> dict:
    return {"nodes": [
        {"id": "prep", "task": "emit", "plane": "control", "params": {"value": {"text": "hello"}}},
        {"id": "sum", "task": "checksum", "plane": "python", "needs": ["prep"],
         "params": {"text": {"$ref": "prep.output.text"}}},
        {"id": "done", "task": "collect", "plane": "control", "needs": ["sum"],
         "params": {"values": {"sha": {"$ref": "sum.output.sha256"}}}},
    ]}


async def test_graph_crosses_planes_control_python_control(control_plane: ControlPlane, worker: RunningWorker):
    submitted = await control_plane.submit(cross_plane_graph())
    job = await wait_for_job(control_plane, submitted.job_id)

    assert job.status == "succeeded"
    import hashlib
    sha = hashlib.sha256(b"hello").hexdigest()
    assert node(job, "sum").output["sha256"] == sha
    assert node(job, "done").output == {"values": {"sha": sha}}
    # create → python → control → finished: three handoffs after the first
    assert job.handoff_seq == 4
    planes = {(e.node_id, e.plane) for e in await control_plane.bridge.events(job.id) if e.status == "running"}
    assert ("prep", "control") in planes and ("sum", "python") in planes and ("done", "control") in planes


async def test_runtime_state_a_client_sends_is_ignored_and_every_node_runs(
    control_plane: ControlPlane, worker: RunningWorker
):
    forged = {"status": "succeeded", "attempts": 7, "progress": 1.0, "started_at": 1.0, "finished_at": 2.0,
              "output": {"sha256": "forged"}, "reason": "forged",
              "artifacts": [{"name": "x", "bucket": "b", "key": "k", "size": 1, "sha256": "0" * 64,
                             "content_type": "text/plain"}]}
    graph = cross_plane_graph()
    graph["nodes"] = [{**n, **forged} for n in graph["nodes"]]
    submitted = await control_plane.submit(graph)
    as_queued = submitted.job  # the job as the create script stored it
    assert [n.status for n in as_queued.graph.nodes] == ["queued", "pending", "pending"]
    assert {(n.attempts, n.progress, n.started_at, n.finished_at, n.output, n.reason, tuple(n.artifacts))
            for n in as_queued.graph.nodes} == {(0, 0.0, None, None, None, None, ())}
    job = await wait_for_job(control_plane, submitted.job_id)
    assert job.status == "succeeded"
    assert [n.attempts for n in job.graph.nodes] == [1, 1, 1]
    assert node(job, "sum").output["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert [a.name for n in job.graph.nodes for a in n.artifacts] == ["checksum.txt"]  # its own, not the forged one
    assert node(job, "prep").started_at > 2.0 and node(job, "prep").reason is None


async def test_checksum_artifact_is_recorded_with_size_sha_and_type(
    control_plane: ControlPlane, worker: RunningWorker
):
    submitted = await control_plane.submit(cross_plane_graph())
    job = await wait_for_job(control_plane, submitted.job_id)

    (artifact,) = node(job, "sum").artifacts
    assert artifact.key == f"jobs/{job.id}/sum/checksum.txt"
    assert artifact.content_type == "text/plain"
    body = await control_plane.artifacts.get(artifact.key)
    assert artifact.size == len(body)
    import hashlib
    assert artifact.sha256 == hashlib.sha256(body).hexdigest()
    url = await control_plane.artifacts.presigned_url(artifact.key)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == body


async def test_fan_out_and_fan_in_runs_the_join_once(control_plane: ControlPlane, worker: RunningWorker):
    branches = [f"b{i}" for i in range(5)]
    graph = {"nodes": [
        {"id": "root", "task": "emit", "plane": "control", "params": {"value": {"n": 1}}},
        *[{"id": b, "task": "noop", "plane": "python", "needs": ["root"], "params": {"value": b}} for b in branches],
        {"id": "join", "task": "collect", "plane": "control", "needs": branches,
         "params": {"values": {b: {"$ref": f"{b}.output.value"} for b in branches}}},
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert job.status == "succeeded"
    assert node(job, "join").output == {"values": {b: b for b in branches}}
    assert node(job, "join").attempts == 1
    runs = [e for e in await control_plane.bridge.events(job.id) if e.node_id == "join" and e.status == "running"]
    assert len(runs) == 1


async def test_failure_skips_dependents_and_fails_the_job(control_plane: ControlPlane, worker: RunningWorker):
    graph = {"nodes": [
        {"id": "bad", "task": "fail", "plane": "python", "params": {"message": "boom"}},
        {"id": "after", "task": "noop", "plane": "python", "needs": ["bad"]},
        {"id": "join", "task": "collect", "plane": "control", "needs": ["after"]},
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert job.status == "failed"
    assert node(job, "bad").status == "failed"
    assert node(job, "bad").error.type == "ValueError" and node(job, "bad").error.message == "boom"
    assert node(job, "after").status == "skipped" and "bad" in node(job, "after").reason
    assert node(job, "join").status == "skipped" and "after" in node(job, "join").reason


async def test_failure_with_an_independent_successful_branch_is_partial(
    control_plane: ControlPlane, worker: RunningWorker
):
    graph = {"nodes": [
        {"id": "bad", "task": "fail", "plane": "python"},
        {"id": "skipped_join", "task": "collect", "plane": "control", "needs": ["bad"]},
        {"id": "good", "task": "noop", "plane": "python"},
        {"id": "good_join", "task": "collect", "plane": "control", "needs": ["good"]},
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert job.status == "partial"
    assert node(job, "good_join").status == "succeeded"
    assert node(job, "skipped_join").status == "skipped"


async def test_transient_errors_are_retried_with_backoff(control_plane: ControlPlane, worker: RunningWorker):
    graph = {"nodes": [{"id": "f", "task": "flaky", "plane": "python", "params": {"fail_times": 2}}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert job.status == "succeeded"
    assert node(job, "f").attempts == 3
    assert node(job, "f").output == {"attempt": 3}
    retries = [e for e in await control_plane.bridge.events(job.id) if e.message and e.message.startswith("retrying")]
    assert len(retries) == 2


async def test_retries_stop_at_the_policy_limit(control_plane: ControlPlane, worker: RunningWorker):
    graph = {"nodes": [{"id": "f", "task": "flaky", "plane": "python", "params": {"fail_times": 5}}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert job.status == "failed"
    assert node(job, "f").attempts == 3
    assert node(job, "f").error.transient is True


async def test_non_transient_errors_are_not_retried(control_plane: ControlPlane, worker: RunningWorker):
    graph = {"nodes": [{"id": "f", "task": "fail", "plane": "python"}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert node(job, "f").attempts == 1


async def test_resubmitting_a_client_chosen_id_returns_the_same_job(
    control_plane: ControlPlane, worker: RunningWorker
):
    graph = {"id": "my-job-1", "nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
    first = await control_plane.submit(graph)
    await wait_for_job(control_plane, first.job_id)
    second = await control_plane.submit(graph)

    assert first.created and not second.created
    assert second.job_id == "my-job-1" and second.status == "succeeded"
    events = await control_plane.bridge.events("my-job-1")
    assert sum(1 for e in events if e.node_id == "a" and e.status == "running") == 1


async def test_finished_jobs_expire_after_the_retention(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    job = await wait_for_job(control_plane, (await control_plane.submit(
        {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})).job_id)

    keys = control_plane.bridge.keys
    ttl = control_plane.settings.finished_job_ttl_s
    assert 0 < await redis.ttl(keys.job(job.id)) <= ttl
    assert 0 < await redis.ttl(keys.events(job.id)) <= ttl


async def test_a_slow_branch_does_not_delay_an_unrelated_one(control_plane: ControlPlane, worker: RunningWorker):
    """In LangGraph's lockstep supersteps, c would wait for the superstep holding `slow`."""
    graph = {"nodes": [
        {"id": "slow", "task": "sleep", "plane": "python", "params": {"seconds": 1.5, "steps": 3}},
        {"id": "a", "task": "sleep", "plane": "python", "params": {"seconds": 0.05, "steps": 1}},
        {"id": "b", "task": "sleep", "plane": "python", "needs": ["a"], "params": {"seconds": 0.05, "steps": 1}},
        {"id": "c", "task": "sleep", "plane": "python", "needs": ["b"], "params": {"seconds": 0.05, "steps": 1}},
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)

    assert job.status == "succeeded"
    slow, b, c = node(job, "slow"), node(job, "b"), node(job, "c")
    assert c.finished_at < slow.finished_at - 1.0  # the chain finished long before the slow branch
    assert c.started_at - b.finished_at < 0.25  # c started as soon as its own need was done


async def test_job_state_is_served_over_http(api, worker: RunningWorker, control_plane: ControlPlane):
    client = api("alice")
    created = await client.post("/jobs", json=cross_plane_graph(), headers={"X-Request-Id": "req-42"})
    assert created.status_code == 201
    assert created.headers["X-Request-Id"] == "req-42"
    job_id = created.json()["id"]
    await wait_for_job(control_plane, job_id)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "succeeded" and job["request_id"] == "req-42" and job["user"] == "alice"
    assert [n["status"] for n in job["graph"]["nodes"]] == ["succeeded"] * 3
    events = (await client.get(f"/jobs/{job_id}/events", params={"since": 3})).json()
    assert events[0]["seq"] == 4
    assert (await client.get("/jobs/nope")).status_code == 404
    health = await client.get("/health")
    assert health.status_code == 200 and health.json()["redis"] is True
    metrics = (await client.get("/metrics")).text
    assert "dualplane_nodes_finished_total" in metrics


async def test_invalid_graph_is_a_422_with_node_scoped_errors(api, control_plane: ControlPlane):
    graph = {"nodes": [
        {"id": "a", "task": "sleep", "plane": "python", "params": {"seconds": -1}},
        {"id": "b", "task": "nope", "plane": "python", "needs": ["a"]},
    ]}
    response = await api("alice").post("/jobs", json=graph)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["node_errors"]
    assert errors["a"][0]["field"] == "seconds"
    assert "unknown task" in errors["b"][0]["message"]
    for stream in control_plane.bridge.keys.lane_streams("python:default"):  # nothing queued on any partition
        assert await control_plane.bridge.stream_length(stream) == 0


async def test_get_capabilities_reports_the_worker_that_ran_it(control_plane: ControlPlane, worker: RunningWorker):
    graph = {"nodes": [{"id": "caps", "task": "get_capabilities", "plane": "python"}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)
    caps = node(job, "caps").output
    assert job.status == "succeeded"
    assert caps["worker_id"] == worker.worker.worker_id and caps["device"] == "cpu"
    assert {"generate_music", "render_video", "train_lora", "train_voice", "get_capabilities"} <= set(caps["tasks"])


async def test_a_submission_answers_with_the_job_exactly_as_stored(control_plane: ControlPlane):
    graph = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": "x"}},
                       {"id": "b", "task": "noop", "plane": "python", "needs": ["a"]},
                       {"id": "c", "task": "collect", "plane": "control", "needs": ["b"]}],
             "metadata": {"name": "as stored"}}
    submitted = await control_plane.submit(graph, request_id="req-7", user="u-answer")  # no worker: it waits
    again = await control_plane.submit(graph, request_id="req-7", user="u-answer", idempotency_key="k")
    repeated = await control_plane.submit(graph, request_id="req-7", user="u-answer", idempotency_key="k")

    assert submitted.created and submitted.job is not None
    assert submitted.job == await control_plane.get_job(submitted.job_id)  # no read back, the same job
    assert again.created and repeated.job is None and not repeated.created  # a known id is read by the route
