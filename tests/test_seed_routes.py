"""The seeds' routes (/generate, /job) and the external-worker protocol (claim, report), against
a real control plane, worker, Redis and SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from tests.helpers import RunningWorker, node, wait_for_job, wait_for_node


async def test_generate_runs_musicgen_and_answers_the_finished_job_with_artifact_urls(
    api, worker_factory, uploaded_models: ArtifactStore, tmp_path: Path
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    response = await api("alice").post("/generate", json={"text": "solo piano melody", "duration": 0.2, "seed": 3})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["jobId"] == body["id"] and body["status"] == "succeeded"
    music = next(n for n in body["graph"]["nodes"] if n["id"] == "generate_music")
    assert music["params"] == {"prompt": "solo piano melody", "duration_s": 0.2, "seed": 3}
    urls = {a["name"]: a["url"] for a in body["artifacts"]}
    assert set(urls) == {"music.wav", "music.opus"}
    async with httpx.AsyncClient() as store:  # the presigned URL serves the bytes without credentials
        wav = await store.get(urls["music.wav"])
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF"


async def test_generate_answers_202_when_the_wait_runs_out_and_422_naming_a_bad_field(api):
    alice = api("alice")  # no worker: the music node waits in its queue
    late = await alice.post("/generate?wait=0.05", json={"prompt": "rain on a window", "duration": 1})
    assert late.status_code == 202, late.text
    assert late.json()["jobId"] == late.json()["id"] and late.json()["status"] == "queued"
    assert "artifacts" not in late.json()

    for body, field in [({"text": "x", "loudness": 3}, "body.loudness"),
                        ({"text": "x", "duration": -1}, "body.duration"),
                        ({"text": "x", "prompt": "y"}, "body.prompt"),
                        ({"model": "kazoo", "text": "x"}, "body.model"),
                        ({"duration": 2}, "body.prompt")]:
        response = await alice.post("/generate", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == field, (body, response.json())
    bad_text = await alice.post("/generate", json={"text": "x", "loudness": 3})
    assert "loudness" in bad_text.json()["detail"] and "prompt" in bad_text.json()["detail"]
    refused = await alice.post("/generate", json={"text": "a ballad in the voice of Jane Doe"})
    assert refused.status_code == 422 and refused.json()["rule"] == "impersonation"  # the content policy, as /jobs
    planned = await api("conductor", role="orchestrator").post(
        "/job", json={"model": "compose", "payload": "a lullaby sung in the voice of Jane Doe"})
    assert planned.status_code == 422 and planned.json()["rule"] == "impersonation"  # screened like /compose
    listed = (await alice.get("/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == [late.json()["id"]]  # the refused requests made no job


async def test_job_async_and_sync_with_a_task(api, control_plane: ControlPlane, worker: RunningWorker):
    orchestrator = api("conductor", role="orchestrator")
    queued = await orchestrator.post("/job", json={"model": "checksum", "mode": "async", "payload": {"text": "abc"}})
    assert queued.status_code == 202, queued.text
    job = await wait_for_job(control_plane, queued.json()["jobId"])
    assert job.status == "succeeded" and job.user == "conductor"
    assert node(job, "checksum").output["sha256"] == hashlib.sha256(b"abc").hexdigest()

    done = await orchestrator.post("/job", json={"model": "emit", "mode": "sync", "payload": {"value": {"a": 1}}})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.json()["jobId"] == done.json()["id"]
    assert node(await control_plane.get_job(done.json()["id"]), "emit").output == {"a": 1}

    unknown = await orchestrator.post("/job", json={"model": "kazoo", "payload": {}})
    assert unknown.status_code == 422 and "song" in unknown.json()["detail"]
    bad_payload = await orchestrator.post("/job", json={"model": "checksum", "payload": {"txt": "abc"}})
    assert bad_payload.status_code == 422 and bad_payload.json()["errors"][0]["field"] == "body.payload.txt"


async def test_job_with_a_planned_goal(api, control_plane: ControlPlane, worker: RunningWorker):
    orchestrator = api("conductor", role="orchestrator")
    response = await orchestrator.post("/job", json={"model": "song", "mode": "sync",
                                                     "payload": {"text": "a calm piano piece", "duration": 4}})
    assert response.status_code in (200, 202), response.text
    job = await wait_for_job(control_plane, response.json()["jobId"], timeout_s=60)
    assert job.status == "succeeded", [(n.id, n.error) for n in job.graph.nodes if n.error]
    tasks = {n.task for n in job.graph.nodes}
    assert "plan_song" in tasks and "arrange_music" in tasks
    assert job.graph.metadata["brief"]["music"] is not None  # it went through the planner

    nothing = await orchestrator.post("/job", json={"model": "compose", "payload": "hello there"})
    assert nothing.status_code == 422 and nothing.json()["title"] == "Nothing to make"


def external_graph() -> dict:
    """prep (control) → render (external) → sum (python, on the external output)."""
    return {"nodes": [
        {"id": "prep", "task": "emit", "plane": "control", "params": {"value": {"text": "hello"}}},
        {"id": "render", "task": "remote_render", "plane": "external", "needs": ["prep"],
         "params": {"prompt": {"$ref": "prep.output.text"}, "size": 3}},
        {"id": "sum", "task": "checksum", "plane": "python", "needs": ["render"],
         "params": {"text": {"$ref": "render.output.text"}}},
    ]}


async def test_an_external_node_is_claimed_reported_and_completed_then_the_python_node_runs(
    api, control_plane: ControlPlane, worker: RunningWorker, settings: Settings
):
    submitted = await api("alice").post("/jobs", json=external_graph())
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    job = await wait_for_node(control_plane, job_id, "render", "queued")
    assert job.owner == "external" and node(job, "prep").status == "succeeded"

    box = api("gpu-box", role="orchestrator")
    claim = await box.post(f"/jobs/{job_id}/nodes/render/claim", json={"uploads": ["out.txt"]})
    assert claim.status_code == 200, claim.text
    taken = claim.json()
    assert taken["jobId"] == job_id and taken["task"] == "remote_render" and taken["attempt"] == 1
    assert taken["params"] == {"prompt": "hello", "size": 3}  # $ref filled in
    assert taken["inputs"]["prep"]["output"] == {"text": "hello"}
    async with httpx.AsyncClient() as store:
        put = await store.put(taken["uploads"]["out.txt"]["url"], content=b"rendered bytes",
                              headers={"Content-Type": "text/plain"})
    assert put.status_code == 200, put.text

    fence = taken["fence"]
    progress = await box.post("/jobs/report", json={"jobId": job_id, "node": "render", "fence": fence,
                                                    "kind": "progress", "progress": 0.5, "message": "halfway"})
    assert progress.status_code == 200, progress.text
    assert node(await control_plane.get_job(job_id), "render").progress == 0.5
    data = await box.post("/jobs/report", json={"jobId": job_id, "node": "render", "fence": fence,
                                                "kind": "data", "data": {"frames": 12}})
    assert data.status_code == 200, data.text

    missing = await box.post("/jobs/report", json={"jobId": job_id, "node": "render", "fence": fence,
                                                   "kind": "complete", "output": {"text": "abc"},
                                                   "artifacts": ["never.txt"]})
    assert missing.status_code == 422 and "never.txt" in missing.json()["detail"]
    complete = {"jobId": job_id, "node": "render", "fence": fence, "attempt": 1, "kind": "complete",
                "output": {"text": "abc"}, "artifacts": ["out.txt"]}
    done = await box.post("/jobs/report", json=complete)
    assert done.status_code == 200, done.text

    job = await wait_for_job(control_plane, job_id)
    assert job.status == "succeeded", [(n.id, n.status, n.error) for n in job.graph.nodes]
    assert node(job, "sum").output["sha256"] == hashlib.sha256(b"abc").hexdigest()  # ran on the external output
    (artifact,) = node(job, "render").artifacts
    assert artifact.sha256 == hashlib.sha256(b"rendered bytes").hexdigest() and artifact.size == 14
    assert artifact.key.startswith(f"jobs/{job_id}/render/") and artifact.content_type == "text/plain"
    events = await control_plane.bridge.events(job_id)
    kinds = {(e.type, e.node_id, e.plane) for e in events}
    assert ("progress", "render", "external") in kinds and ("data", "render", "external") in kinds
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gap-free

    again = await box.post("/jobs/report", json=complete)  # a duplicate completion
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    assert (await control_plane.get_job(job_id)).seq == job.seq  # nothing written
    links = await api("alice").get(f"/jobs/{job_id}/artifacts")
    assert [a["name"] for a in links.json()["artifacts"]] == ["out.txt", "checksum.txt"]


async def test_a_claim_whose_lease_ran_out_is_taken_over_and_its_late_reports_change_nothing(
    api, control_plane: ControlPlane, worker: RunningWorker
):
    job_id = (await api("alice").post("/jobs", json=external_graph())).json()["id"]
    await wait_for_node(control_plane, job_id, "render", "queued")
    first, second = api("box-1", role="orchestrator"), api("box-2", role="orchestrator")
    old = (await first.post(f"/jobs/{job_id}/nodes/render/claim", json={"lease_s": 1})).json()

    held = await second.post(f"/jobs/{job_id}/nodes/render/claim", json={})
    assert held.status_code == 409 and "held by another claim" in held.json()["detail"]
    await asyncio.sleep(1.5)  # box-1 goes silent past its lease
    new = await second.post(f"/jobs/{job_id}/nodes/render/claim", json={"lease_s": 30})
    assert new.status_code == 200, new.text
    assert new.json()["fence"] > old["fence"] and new.json()["attempt"] == 2

    before = await control_plane.get_job(job_id)
    for late in ({"kind": "progress", "progress": 0.9}, {"kind": "complete", "output": {"text": "stale"}}):
        response = await first.post("/jobs/report", json={"jobId": job_id, "node": "render", "fence": old["fence"],
                                                          **late})
        assert response.status_code == 409, response.text
        assert "not node 'render''s current claim" in response.json()["detail"]
    after = await control_plane.get_job(job_id)
    assert after.seq == before.seq and node(after, "render") == node(before, "render")

    ok = await second.post("/jobs/report", json={"job_id": job_id, "node": "render", "fence": new.json()["fence"],
                                                 "kind": "complete", "output": {"text": "fresh"}})
    assert ok.status_code == 200, ok.text
    job = await wait_for_job(control_plane, job_id)
    assert job.status == "succeeded" and node(job, "render").output == {"text": "fresh"}
    assert node(job, "sum").output["sha256"] == hashlib.sha256(b"fresh").hexdigest()


async def test_a_failed_external_node_skips_its_dependents_and_a_cancel_ends_a_waiting_job(
    api, control_plane: ControlPlane
):
    alice, box = api("alice"), api("box", role="orchestrator")
    failing = (await alice.post("/jobs", json=external_graph())).json()["id"]
    await wait_for_node(control_plane, failing, "render", "queued")
    fence = (await box.post(f"/jobs/{failing}/nodes/render/claim", json={})).json()["fence"]
    failed = await box.post("/jobs/report", json={"jobId": failing, "node": "render", "fence": fence, "kind": "fail",
                                                  "error": {"type": "CudaOOM", "message": "out of memory"}})
    assert failed.status_code == 200, failed.text
    job = await wait_for_job(control_plane, failing)
    assert job.status == "failed" and node(job, "render").error.type == "CudaOOM"
    assert node(job, "sum").status == "skipped"

    waiting = (await alice.post("/jobs", json=external_graph())).json()["id"]
    await wait_for_node(control_plane, waiting, "render", "queued")
    assert (await alice.post(f"/jobs/{waiting}/cancel")).status_code == 202
    job = await wait_for_job(control_plane, waiting)
    assert job.status == "cancelled" and node(job, "render").status == "cancelled"
    refused = await box.post(f"/jobs/{waiting}/nodes/render/claim", json={})
    assert refused.status_code == 409


async def test_claims_and_reports_need_the_orchestrator_role_and_bad_requests_are_4xx(
    api, control_plane: ControlPlane
):
    job_id = (await api("alice").post("/jobs", json=external_graph())).json()["id"]
    await wait_for_node(control_plane, job_id, "render", "queued")
    report = {"jobId": job_id, "node": "render", "fence": 1, "kind": "progress", "progress": 0.1}
    for who in (api("alice"), api("root", role="admin")):
        assert (await who.post(f"/jobs/{job_id}/nodes/render/claim", json={})).status_code == 403
        assert (await who.post("/jobs/report", json=report)).status_code == 403
    box = api("box", role="orchestrator")
    assert (await box.post(f"/jobs/{job_id}/nodes/prep/claim", json={})).status_code == 404  # not external
    assert (await box.post("/jobs/nope/nodes/render/claim", json={})).status_code == 404
    assert (await box.post("/jobs/report", json={**report, "kind": "progress", "progress": None})).status_code == 422
    assert (await box.post("/jobs/report", json={**report, "fence": 0})).status_code == 422
    assert (await box.post("/jobs/report", json=report)).status_code == 409  # never claimed: no such claim
    assert node(await control_plane.get_job(job_id), "render").status == "queued"


def test_the_seeds_setting_names_are_aliases(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DUALPLANE_CONCURRENCY", raising=False)
    monkeypatch.setenv("WORKER_CONCURRENCY", "7")
    assert Settings().concurrency == 7
    monkeypatch.setenv("DUALPLANE_CONCURRENCY", "3")  # the project's own name wins when both are set
    assert Settings().concurrency == 3
