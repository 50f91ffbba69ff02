"""The CLI as a creator's tool, run as a person runs it (``python -m dualplane ...`` processes)
against a real control plane served over HTTP, a worker, Redis and SeaweedFS: local files as
inputs (`compose --input`, `submit --upload`), why a job failed, uploads, rename and re-run."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import uvicorn

from dualplane.control_plane import create_app
from dualplane.devstack.services import free_port
from tests.helpers import wait_for_job, wav_bytes

pytestmark = pytest.mark.integration

Cli = Callable[..., Awaitable[tuple[int, str, str]]]


def jpeg_header(width: int, height: int) -> bytes:
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\1\x22\0\2\x11\1\3\x11\1"
    return b"\xff\xd8" + sof0 + b"\xff\xd9"


@pytest.fixture
async def served(settings, control_plane, authenticator) -> AsyncIterator[str]:
    """The app on a real port, in this test's event loop (the plane and worker run there too)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, plane=control_plane, authenticator=authenticator),
                                           host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), serving
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


@pytest.fixture
def cli(served, authenticator, tmp_path) -> Cli:
    """``await cli("alice", "jobs")``: (exit code, stdout, stderr) of `dualplane jobs` as alice."""

    async def run(user: str, *args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALPLANE_", "REDIS_", "S3_"))}
        env.update(DUALPLANE_URL=served, DUALPLANE_TOKEN=authenticator.mint(user))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dualplane", *args, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode or 0, out.decode(), err.decode()

    return run


async def test_compose_uploads_its_inputs_and_plans_with_them(cli, api, tmp_path: Path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(wav_bytes(0.5))
    (tmp_path / "clips" / "b.wav").write_bytes(wav_bytes(0.75))
    (tmp_path / "photo.jpg").write_bytes(jpeg_header(64, 48))
    (tmp_path / "words.txt").write_text("Rain on the roof\nrain on the road\n")
    code, out, err = await cli("alice", "compose", "train a voice from my clips and sing a chorus",
                               "--input", "clips/a.wav", "--input", "clips/b.wav", "--input", "photo.jpg",
                               "--input", "words.txt", "--consent", "--dry-run")
    assert code == 0, out + err
    uploads = {u["name"]: u for u in (await api("alice").get("/uploads")).json()["uploads"]}
    assert set(uploads) == {"a.wav", "b.wav", "photo.jpg", "words.txt"}
    assert uploads["a.wav"]["consent"] is True and uploads["a.wav"]["duration_s"] == 0.5
    assert (uploads["photo.jpg"]["width"], uploads["photo.jpg"]["height"]) == (64, 48)
    plan = json.loads(out[out.index("{"):])
    assert plan["brief"]["voice_training"]["clips"] == [uploads["a.wav"]["key"], uploads["b.wav"]["key"]]
    assert "Rain on the roof" in json.dumps(plan["graph"])  # the .txt became the lyrics

    code, out, err = await cli("alice", "compose", "train a voice from my clips and sing a chorus",
                               "--input", "clips/a.wav", "--input", "clips/b.wav", "--consent")
    assert code == 0, out + err
    job_id = out.split()[1]
    job = (await api("alice").get(f"/jobs/{job_id}")).json()
    assert job["name"] == "Train a voice from my clips and sing a chorus"
    assert uploads["a.wav"]["key"] in json.dumps(job["graph"])

    code, out, err = await cli("alice", "compose", "a song", "--input", "clip.mp4")
    assert code == 1 and "clip.mp4: .mp4 is not an accepted input" in err, out + err


async def test_submit_puts_uploaded_keys_where_the_graph_names_them(cli, api, control_plane, tmp_path: Path):
    (tmp_path / "a.wav").write_bytes(wav_bytes(0.5))
    (tmp_path / "b.wav").write_bytes(wav_bytes(0.25))
    graph = {"nodes": [
        {"id": "mix", "task": "mix_audio", "plane": "control", "params": {"bed": "@bed", "voice": "@voice"}},
        {"id": "echo", "task": "emit", "plane": "control", "params": {"value": {"keys": ["@bed", "as is"]}}}]}
    (tmp_path / "graph.json").write_text(json.dumps(graph))
    code, out, err = await cli("alice", "submit", "graph.json", "--upload", "bed=a.wav", "--upload", "voice=b.wav",
                               "--wait", "60")
    assert code == 0, out + err
    assert "succeeded" in out.splitlines()[0] and "mix/mix.wav" in out, out
    job = await control_plane.get_job(out.split()[1])
    keys = {u["name"]: u["key"] for u in (await api("alice").get("/uploads")).json()["uploads"]}
    mix, echo = job.graph.nodes
    assert mix.params == {"bed": keys["a.wav"], "voice": keys["b.wav"]}
    assert echo.output == {"keys": [keys["a.wav"], "as is"]}

    # a name no --upload gives, or a file that is no accepted input: refused before anything is sent
    (tmp_path / "typo.json").write_text(json.dumps({"nodes": [
        {"id": "mix", "task": "mix_audio", "plane": "control", "params": {"bed": "@bed", "voice": "@vocie"}}]}))
    code, out, err = await cli("bob", "submit", "typo.json", "--upload", "bed=a.wav", "--upload", "voice=b.wav")
    assert code == 1 and "the graph names @vocie but no --upload gives it" in err, out + err
    (tmp_path / "movie.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    code, out, err = await cli("bob", "submit", "graph.json", "--upload", "bed=movie.mp4", "--upload", "voice=b.wav")
    assert code == 1 and ".mp4 is not an accepted input" in err, out + err
    assert (await api("bob").get("/uploads")).json() == {"uploads": []}
    assert (await api("bob").get("/jobs")).json()["jobs"] == []


async def test_a_failed_or_dead_lettered_job_says_why(cli, api, control_plane, worker, redis, tmp_path: Path):
    graph = {"nodes": [{"id": "boom", "task": "fail", "plane": "python", "params": {"message": "no drums today"}},
                       {"id": "after", "task": "noop", "plane": "python", "needs": ["boom"]}],
             "metadata": {"name": "Drum take"}}
    (tmp_path / "fail.json").write_text(json.dumps(graph))
    code, out, err = await cli("alice", "submit", "fail.json", "--watch")
    assert code == 1, out + err
    assert "failed: node boom failed" in out, out
    assert "why: node boom (fail) failed: ValueError: no drums today" in out, out
    assert "why: node after (noop) skipped: " in out, out

    # a job whose message cannot be processed: queued where no worker reads, its handoff poisoned
    parked = await api("alice").post("/jobs", json={"nodes": [{"id": "a", "task": "noop", "plane": "python",
                                                               "pool": "gpu"}], "metadata": {"name": "Parked"}})
    poison = orjson.dumps({"job_id": parked.json()["id"], "handoff_seq": 1, "graph": {"nodes": [
        {"id": "a", "task": "noop", "plane": "python", "needs": ["ghost"]}]}})
    await redis.xadd(control_plane.bridge.keys.data_stream("default"), {"m": poison})
    await wait_for_job(control_plane, parked.json()["id"])

    code, out, err = await cli("alice", "jobs")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert any(line.startswith(parked.json()["id"]) and "Parked" in line for line in lines), out
    assert "the job was dead-lettered: " in out and "unknown node 'ghost'" in out, out
    assert "node boom (fail) failed: ValueError: no drums today" in out, out
    assert (await cli("bob", "jobs"))[1].splitlines()[1:] == []  # bob's list has the header only


async def test_uploads_ls_rm_rename_and_rerun(cli, api, control_plane, tmp_path: Path):
    alice = api("alice")
    record = (await alice.post("/uploads", params={"name": "take.wav", "consent": "true"}, content=wav_bytes(1.0),
                               headers={"Content-Type": "audio/wav"})).json()
    code, out, err = await cli("alice", "uploads", "ls")
    assert code == 0 and record["key"] in out and "1 s" in out and "consent" in out, out + err
    assert (await cli("bob", "uploads", "ls"))[1].strip() == "no uploads"
    code, out, err = await cli("bob", "uploads", "rm", record["key"].replace("/alice/", "/bob/"))
    assert code == 1 and "404 Unknown upload" in err, out + err
    code, out, err = await cli("alice", "uploads", "rm", record["key"])
    assert code == 0 and f"deleted {record['key']}" in out, out + err
    assert (await cli("alice", "uploads", "ls"))[1].strip() == "no uploads"
    assert (await cli("alice", "uploads", "rm", "not-a-key"))[0] == 1

    song = {"nodes": [{"id": "song", "task": "plan_song", "plane": "control",
                       "params": {"narrative": "rain on a tin roof", "seed": 3}}]}
    first = await alice.post("/jobs", json=song, params={"wait": 30})
    job_id = first.json()["id"]
    code, out, err = await cli("alice", "rename", job_id, "Tin roof, take 2")
    assert code == 0 and f"job {job_id} is now 'Tin roof, take 2'" in out, out + err
    assert "Tin roof, take 2" in (await cli("alice", "jobs"))[1]
    assert (await cli("bob", "rename", job_id, "mine"))[0] == 1

    code, out, err = await cli("alice", "rerun", job_id, "--new-seed", "--watch")
    assert code == 0, out + err
    new_id = next(line.split()[2] for line in out.splitlines() if line.startswith("submitted job "))
    new = await control_plane.get_job(new_id)
    assert new.graph.metadata["rerun_of"] == job_id and new.graph.nodes[0].params["seed"] != 3
    assert new.status == "succeeded" and new.name == "Tin roof, take 2"
