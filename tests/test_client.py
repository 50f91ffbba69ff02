"""The Python client and the client commands of the CLI, against a real control plane served by
uvicorn on the test's event loop (real Redis, real SeaweedFS, an in-process worker).

The sync client and the CLI block, so they run in a thread (or a subprocess) while the loop
keeps serving the API and running the worker.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from dualplane.cli.client import LiveView, format_table
from dualplane.client import ApiError, AsyncClient, Client
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.devstack.services import LOOPBACK, free_port
from tests.helpers import RunningWorker, unique_name

pytestmark = pytest.mark.integration

SECRET = "test-secret-of-at-least-32-bytes-long"


def mint(user: str = "alice", role: str = "user") -> str:
    return Authenticator(algorithm="HS256", secret=SECRET).mint(user, role)


class Served:
    """A uvicorn server for one app on the current loop; `restart` drops every connection."""

    def __init__(self, settings: Settings, plane: ControlPlane) -> None:
        self.settings = settings.model_copy(update={"jwt_secret": SECRET})
        self.plane, self.port = plane, free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(
            create_app(self.settings, plane=self.plane), host=LOOPBACK, port=self.port,
            ws="websockets-sansio", log_level="warning", lifespan="on",
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(500):
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if not self._server.started:
            await self._task  # raises what stopped it
            raise RuntimeError("uvicorn did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 15)
            self._server = self._task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def api(settings: Settings, control_plane: ControlPlane, worker: RunningWorker) -> AsyncIterator[Served]:
    served = Served(settings, control_plane)
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


@pytest.fixture
async def client(api: Served) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(api.url, mint()) as c:
        yield c


def pipeline(seconds: float = 0.3) -> dict[str, Any]:
    """control -> two python nodes (one with an artifact) -> control."""
    return {
        "nodes": [
            {"id": "seed", "task": "emit", "plane": "control", "params": {"value": {"text": "rain"}}},
            {"id": "hash", "task": "checksum", "plane": "python", "needs": ["seed"],
             "params": {"text": {"$ref": "seed.output.text"}}},
            {"id": "wait", "task": "sleep", "plane": "python", "needs": ["seed"],
             "params": {"seconds": seconds, "steps": 5}},
            {"id": "collect", "task": "collect", "plane": "control", "needs": ["hash", "wait"],
             "params": {"values": {"sha256": {"$ref": "hash.output.sha256"}}}},
        ]
    }  # fmt: skip


def sleeper(seconds: float = 30.0) -> dict[str, Any]:
    return {"nodes": [{"id": "nap", "task": "sleep", "plane": "python",
                       "params": {"seconds": seconds, "steps": max(1, int(seconds * 10))}}]}  # fmt: skip


def check_watched(messages: list[dict[str, Any]], *, since: int = 0) -> list[dict[str, Any]]:
    """The updates of a watch: gap-free seqs after `since`, ending with the job's end."""
    assert messages[0]["type"] == "snapshot"
    events = [m["event"] for m in messages if m["type"] == "update"]
    assert [e["seq"] for e in events] == list(range(since + 1, since + 1 + len(events)))
    last = events[-1]
    assert last["type"] == "status" and not last.get("node_id")
    return events


# -- async client ----------------------------------------------------------------------------


async def test_async_submit_and_watch_to_completion(client: AsyncClient) -> None:
    job = await client.submit(pipeline(), request_id="req-async-1")
    assert job["status"] in ("queued", "running") and job["request_id"] == "req-async-1"

    messages = [m async for m in client.watch(job["id"])]

    events = check_watched(messages)
    assert events[-1]["status"] == "succeeded"
    assert {e["node_id"] for e in events if e["type"] == "progress"} >= {"wait"}
    assert [e["seq"] for e in await client.events(job["id"])] == [e["seq"] for e in events]
    assert [e["seq"] for e in await client.events(job["id"], since=3)] == [e["seq"] for e in events[3:]]
    final = await client.get_job(job["id"])
    assert final["status"] == "succeeded" and final["seq"] == events[-1]["seq"]
    (artifact,) = await client.artifacts(job["id"])
    assert artifact["node_id"] == "hash" and artifact["url"].startswith("http")


async def test_watch_resumes_after_the_server_restarts(api: Served, client: AsyncClient) -> None:
    """The connection drops mid-job; the watch resubscribes with since=<last seq> and neither
    misses nor repeats an event."""
    job = await client.submit(pipeline(seconds=2.0))
    messages: list[dict[str, Any]] = []
    restarted = False
    async for message in client.watch(job["id"]):
        messages.append(message)
        if not restarted and message["type"] == "update" and message["event"]["type"] == "progress":
            restarted = True
            await api.restart()

    assert restarted and sum(m["type"] == "snapshot" for m in messages) >= 2
    assert check_watched(messages)[-1]["status"] == "succeeded"


async def test_watch_of_a_finished_job_replays_and_ends(client: AsyncClient) -> None:
    job = await client.submit(pipeline(seconds=0.1), wait_s=20)
    assert job["status"] == "succeeded"

    events = check_watched([m async for m in client.watch(job["id"])])
    assert events[-1]["seq"] == job["seq"]
    # Resuming after the end yields the snapshot only, then stops.
    (snapshot,) = [m async for m in client.watch(job["id"], since=job["seq"])]
    assert snapshot["type"] == "snapshot" and snapshot["job"]["status"] == "succeeded"


async def test_submit_is_idempotent_with_a_key(client: AsyncClient) -> None:
    key = unique_name("key")
    first = await client.submit(sleeper(0.1), idempotency_key=key)
    again = await client.submit(sleeper(0.1), idempotency_key=key)
    assert again["id"] == first["id"]


async def test_list_jobs_follows_the_cursor(client: AsyncClient) -> None:
    jobs = await client.submit_batch([sleeper(0.05) for _ in range(5)])
    ids = {j["id"] for j in jobs}
    assert len(ids) == 5

    page = await client.list_jobs(limit=2)
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    listed = [s async for s in client.iter_jobs(limit=2)]
    assert [s["id"] for s in listed if s["id"] in ids] == [s["id"] for s in listed]
    assert {s["id"] for s in listed} == ids and len(listed) == 5
    assert listed == sorted(listed, key=lambda s: s["created_at"], reverse=True)
    assert set(listed[0]) >= {"id", "status", "user", "tasks", "progress", "created_at"}
    assert all(s["user"] == "alice" and s["tasks"] == ["sleep"] for s in listed)
    # Another user sees none of them.
    async with AsyncClient(client.base_url, mint("bob")) as bob:
        assert [s async for s in bob.iter_jobs(limit=2)] == []


async def test_cancel_then_delete(client: AsyncClient) -> None:
    job = await client.submit(sleeper(30.0))
    with pytest.raises(ApiError) as running:
        await client.delete(job["id"])
    assert running.value.status == 409

    answer = await client.cancel(job["id"])
    assert answer["id"] == job["id"]
    events = check_watched([m async for m in client.watch(job["id"])])
    assert events[-1]["status"] == "cancelled"

    await client.delete(job["id"])
    with pytest.raises(ApiError) as gone:
        await client.get_job(job["id"])
    assert gone.value.status == 404 and gone.value.title


async def test_an_invalid_graph_raises_api_error_with_node_errors(client: AsyncClient) -> None:
    bad = {"nodes": [
        {"id": "a", "task": "no_such_task", "plane": "python"},
        {"id": "b", "task": "sleep", "plane": "python", "params": {"seconds": "soon"}},
    ]}  # fmt: skip
    with pytest.raises(ApiError) as caught:
        await client.submit(bad)

    error = caught.value
    assert error.status == 422 and error.title
    assert error.node_errors and set(error.node_errors) <= {"a", "b", "_graph"}
    assert all(e["message"] for errors in error.node_errors.values() for e in errors)
    text = str(error)
    assert text.startswith("422 ") and any(f"\n  {node}" in text for node in error.node_errors)


async def test_a_bad_token_is_refused_over_http_and_websocket(api: Served) -> None:
    async with AsyncClient(api.url, "not-a-jwt") as stranger:
        with pytest.raises(ApiError) as http_error:
            await stranger.list_jobs()
        assert http_error.value.status == 401
        with pytest.raises(ApiError) as ws_error:
            async for _ in stranger.watch("whatever"):
                pass
        assert ws_error.value.status == 401


async def test_catalog_workers_and_preferences(client: AsyncClient) -> None:
    names = {t["name"] for t in await client.tasks()}
    assert {"sleep", "checksum", "emit"} <= names
    assert len(await client.workers()) >= 1
    await client.put_preferences({"generator": "tiny", "steps": 4})
    assert await client.get_preferences() == {"generator": "tiny", "steps": 4}


# -- sync client -----------------------------------------------------------------------------


async def test_sync_client_submit_wait_and_watch(api: Served) -> None:
    def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        with Client(api.url, mint()) as client:
            waited = client.submit(pipeline(seconds=0.1), wait_s=20)
            job = client.submit(pipeline(seconds=0.5))
            return waited, list(client.watch(job["id"])), client.get_job(job["id"])

    waited, messages, final = await asyncio.to_thread(scenario)

    assert waited["status"] == "succeeded"
    assert check_watched(messages)[-1]["status"] == "succeeded"
    assert final["status"] == "succeeded"


# -- CLI -------------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALPLANE_", "REDIS_", "S3_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


async def run_cli(*args: str, env: dict[str, str], timeout_s: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dualplane", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    return process.returncode or 0, out.decode(), err.decode()


async def test_cli_submit_watch_prints_events_outcome_and_urls(api: Served, tmp_path: Path) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps(pipeline()))
    env = cli_env(DUALPLANE_URL=api.url, DUALPLANE_TOKEN=mint())

    code, out, err = await run_cli("submit", str(graph), "--watch", env=env)

    assert code == 0, out + err
    job_id = out.splitlines()[0].removeprefix("submitted job ")
    assert f"job {job_id} succeeded" in out
    assert "\x1b[" not in out  # not a terminal: plain lines
    assert any(" wait " in line and "%" in line for line in out.splitlines())  # progress lines
    assert any(line.strip().startswith("hash/checksum.txt  http") for line in out.splitlines())


async def test_cli_submit_watch_exits_1_when_the_job_fails(api: Served, tmp_path: Path) -> None:
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"nodes": [{"id": "boom", "task": "fail", "plane": "python"}]}))
    env = cli_env(DUALPLANE_URL=api.url, DUALPLANE_TOKEN=mint())

    code, out, _ = await run_cli("submit", str(graph), "--watch", env=env)

    assert code == 1 and " failed" in out and "failed on purpose" in out


async def test_cli_token_prints_only_a_valid_token() -> None:
    code, out, _ = await run_cli("token", "--user", "carol", "--role", "admin", "--ttl-s", "60",
                                 env=cli_env(DUALPLANE_JWT_SECRET=SECRET))
    assert code == 0
    principal = Authenticator(algorithm="HS256", secret=SECRET).verify(out.strip())
    assert (principal.user, principal.role) == ("carol", "admin") and out.count("\n") == 1

    code, out, err = await run_cli("token", "--user", "carol", env=cli_env())
    assert code == 1 and out == "" and "JWT_SECRET" in err


async def test_cli_without_a_token_says_to_set_it() -> None:
    code, _, err = await run_cli("jobs", env=cli_env(DUALPLANE_URL="http://127.0.0.1:9"))
    assert code == 1 and "DUALPLANE_TOKEN" in err


async def test_cli_jobs_and_cancel(api: Served, client: AsyncClient) -> None:
    job = await client.submit(sleeper(30.0))
    env = cli_env(DUALPLANE_URL=api.url, DUALPLANE_TOKEN=mint())

    code, out, _ = await run_cli("jobs", "--limit", "5", env=env)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["ID", "NAME", "STATUS", "PROGRESS"] and row.startswith(job["id"])

    code, out, _ = await run_cli("cancel", job["id"], env=env)
    assert code == 0 and out.startswith(f"job {job['id']} ")
    events = check_watched([m async for m in client.watch(job["id"])])
    assert events[-1]["status"] == "cancelled"


# -- rendering (no server) -------------------------------------------------------------------


def _snapshot() -> dict[str, Any]:
    nodes = [{"id": "a", "status": "queued", "progress": 0.0}, {"id": "b", "status": "queued"}]
    return {"type": "snapshot", "jobId": "j", "seq": 0,
            "job": {"id": "j", "status": "queued", "seq": 0, "graph": {"nodes": nodes}}}  # fmt: skip


def _update(seq: int, **event: Any) -> dict[str, Any]:
    return {"type": "update", "jobId": "j", "seq": seq,
            "event": {"seq": seq, "job_id": "j", "ts": 100.0 + seq, **event}}  # fmt: skip


UPDATES = [
    _update(1, type="status", node_id="a", status="running"),
    _update(2, type="progress", node_id="a", progress=0.5),
    _update(3, type="status", node_id="a", status="succeeded"),
    _update(4, type="status", node_id="b", status="failed", message="boom"),
    _update(5, type="status", status="partial"),
]


def test_live_view_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dualplane.cli.client.REDRAW_S", 0.0)
    out = io.StringIO()
    LiveView(out, tty=True, started=100.0).run(iter([_snapshot(), *UPDATES]))

    text = out.getvalue()
    assert text.count("\x1b[3F\x1b[J") == len(UPDATES)  # every redraw overwrites the 3-line block
    last = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert last[0].startswith("job partial") and "100%" in last[0]
    assert last[1].split()[:2] == ["a", "succeeded"] and last[2].split()[:2] == ["b", "failed"]


def test_live_view_prints_one_line_per_event_elsewhere() -> None:
    out = io.StringIO()
    LiveView(out, tty=False, started=100.0).run(iter([_snapshot(), *UPDATES]))

    lines = out.getvalue().splitlines()
    assert len(lines) == len(UPDATES) and "\x1b" not in out.getvalue()
    assert "50%" in lines[1] and "boom" in lines[3] and "partial" in lines[4]


def test_jobs_table_aligns_columns() -> None:
    rows = [{"id": "job-1", "status": "running", "progress": 0.25, "created_at": 0.0,
             "user": "alice", "tasks": ["sleep", "checksum"]},
            {"id": "a-much-longer-id", "status": "succeeded", "progress": 1.0, "created_at": 1e9,
             "user": None, "tasks": []}]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert len(lines) == 3 and lines[0].index("STATUS") == lines[1].index("running")
    assert "25%" in lines[1] and "sleep,checksum" in lines[1] and "100%" in lines[2]


def test_api_error_reads_as_text() -> None:
    error = ApiError(422, "Invalid graph", "invalid graph: a: bad",
                     {"a": [{"field": "params.x", "message": "bad"}], "_graph": [{"message": "cycle"}]})  # fmt: skip
    assert str(error) == "422 Invalid graph: invalid graph: a: bad\n  a.params.x: bad\n  _graph: cycle"



async def test_compose_dry_run_returns_a_graph(client: AsyncClient) -> None:
    planned = await client.compose("a lo-fi track with rain", dry_run=True)
    assert planned["graph"]["nodes"] and all(n["task"] for n in planned["graph"]["nodes"])
