"""The object store going away: killed (connections refused), frozen (SIGSTOP: connections
accepted, never answered) and brought back, on an S3 server of this module's own."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from dualplane.common import errors
from dualplane.common.artifacts import ArtifactStore, store_from_settings
from dualplane.common.context import TaskContext
from dualplane.common.registry import TaskRegistry, task
from dualplane.common.retry import Retry
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.data_plane import Worker
from dualplane.devstack.services import S3Server, start_s3
from dualplane.tasks import default_registry
from tests.helpers import RunningWorker, node, planes_with, unique_name, wait_for_job, wait_for_node


class Store:
    """This module's S3 server, to take down and bring back where its clients expect it."""

    def __init__(self, data_dir: Path) -> None:
        self.server = start_s3(data_dir)

    def kill(self) -> None:
        self.server.process.kill()
        self.server.process.wait()
        self.server.stop()  # its stray sockets

    def restart(self) -> None:
        self.server = start_s3(self.server.data_dir, access_key=self.server.access_key,
                               secret_key=self.server.secret_key, ports=self.server.ports)

    def freeze(self) -> None:
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.server.process.poll() is None:
            os.kill(self.server.process.pid, signal.SIGCONT)

    def up(self) -> None:
        self.thaw()
        if self.server.process.poll() is not None:
            self.restart()


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(tmp_path_factory.mktemp("outage-s3"))
    yield store
    store.thaw()
    store.server.stop()


@pytest.fixture
def s3(own_s3: Store) -> Iterator[Store]:
    """The store, answering at the start of the test and again after it, whatever the test did."""
    own_s3.up()
    yield own_s3
    own_s3.up()


@pytest.fixture
def settings(settings: Settings, s3: Store) -> Settings:
    """conftest's settings (Redis, a fresh bucket, short leases) on this module's S3."""
    server: S3Server = s3.server
    return settings.model_copy(update={"s3_endpoint": server.endpoint, "s3_access_key": server.access_key,
                                       "s3_secret_key": server.secret_key, "s3_read_timeout_s": 60.0})


@pytest.fixture
async def store(settings: Settings) -> ArtifactStore:
    artifacts = store_from_settings(settings.store)
    assert artifacts is not None
    await artifacts.ensure_bucket()
    return artifacts


# -- test tasks -------------------------------------------------------------------------------


class _KeyParams(BaseModel):
    key: str


class _NoParams(BaseModel):
    pass


@task("read_key", plane="python", params=_KeyParams, retry=Retry(max_attempts=40, backoff_s=0.2, max_backoff_s=0.5))
def _read_key(ctx: TaskContext, p: _KeyParams) -> dict[str, Any]:
    return {"bytes": len(ctx.get_artifact(p.key))}


@task("aread_key", plane="python", params=_KeyParams, retry=Retry(max_attempts=1))
async def _aread_key(ctx: TaskContext, p: _KeyParams) -> dict[str, Any]:
    return {"bytes": len(await ctx.aget_artifact(p.key))}


@task("write_artifact", plane="python", params=_NoParams)
def _write_artifact(ctx: TaskContext, p: _NoParams) -> dict[str, Any]:
    ctx.put_artifact("out.bin", b"output", "application/octet-stream")
    return {}


def _registry() -> TaskRegistry:
    registry = default_registry()
    registry.add(_read_key.__task_spec__)
    registry.add(_aread_key.__task_spec__)
    registry.add(_write_artifact.__task_spec__)
    return registry


def _read(key: str, task_name: str = "read_key") -> dict[str, Any]:
    return {"nodes": [{"id": "r", "task": task_name, "plane": "python", "params": {"key": key}}]}


# -- the store's own calls --------------------------------------------------------------------


async def test_store_errors_say_missing_or_unavailable(store: ArtifactStore, s3: Store):
    with pytest.raises(errors.ObjectNotFound) as missing:
        await store.get("jobs/j/n/nothing")
    assert missing.value.key == "jobs/j/n/nothing" and type(missing.value) is errors.ObjectNotFound

    s3.kill()
    with pytest.raises(errors.StoreUnavailable) as down:
        await store.put("j", "n", "a.bin", b"a", "application/octet-stream")
    assert isinstance(down.value, errors.TransientError)
    assert not await store.available()


async def test_a_frozen_store_costs_a_call_its_read_timeout_and_no_more(settings: Settings, s3: Store):
    quick = store_from_settings(settings.store.model_copy(update={"s3_read_timeout_s": 1.0}))
    assert quick is not None
    await quick.ensure_bucket()
    s3.freeze()
    started = time.monotonic()
    try:
        with pytest.raises(errors.StoreUnavailable, match="ReadTimeoutError"):
            await quick.get("jobs/j/n/a.bin")
        waited = time.monotonic() - started
        assert not await quick.available()
    finally:
        s3.thaw()
    assert waited < 10  # one read timeout, not minio's default of 5 minutes, 6 times


# -- (a) a node retried through an outage ---------------------------------------------------


async def test_a_node_reading_while_the_store_is_down_is_retried_until_it_is_back(
    settings: Settings, store: ArtifactStore, s3: Store
):
    key = (await store.put("src", "n", "in.bin", b"12345", "application/octet-stream"))["key"]
    async with planes_with(settings, _registry()) as plane:
        s3.kill()
        job_id = (await plane.submit(_read(key))).job_id
        deadline = time.monotonic() + 20
        while not any(e.message and e.message.startswith("retrying") for e in await plane.bridge.events(job_id)):
            assert time.monotonic() < deadline, f"no retry: {(await plane.get_job(job_id)).model_dump_json()}"
            await asyncio.sleep(0.05)
        s3.restart()
        job = await wait_for_job(plane, job_id, timeout_s=30)

    read = node(job, "r")
    assert job.status == "succeeded", read.error
    assert read.output == {"bytes": 5} and read.attempts >= 2


# -- (b) cancelling a node stuck on a frozen store ------------------------------------------


@pytest.mark.parametrize("task_name", ["read_key", "aread_key"])  # a sync task, an async one
async def test_a_node_blocked_on_a_frozen_store_is_cancelled_promptly(
    settings: Settings, store: ArtifactStore, s3: Store, task_name: str
):
    key = (await store.put("src", "n", "in.bin", b"12345", "application/octet-stream"))["key"]
    async with planes_with(settings, _registry()) as plane:
        s3.freeze()
        try:
            job_id = (await plane.submit(_read(key, task_name))).job_id
            await wait_for_node(plane, job_id, "r", "running")
            await asyncio.sleep(0.5)  # in the store call by now, which would wait 60 s for an answer
            asked = time.monotonic()
            await plane.cancel(job_id)
            job = await wait_for_job(plane, job_id, timeout_s=30)
            took = time.monotonic() - asked
        finally:
            s3.thaw()

    assert job.status == "cancelled" and node(job, "r").status == "cancelled"
    assert took < 20, took  # well before the 60 s read timeout (a cancel takes about 0.1 s)


# -- (c) starting without the store, /health, and the store coming back ----------------------


async def test_planes_start_while_the_store_is_down_and_say_so_until_it_is_back(settings: Settings, s3: Store):
    s3.kill()
    plane = ControlPlane(settings, metrics_registry=CollectorRegistry())
    await plane.start()
    worker = RunningWorker(Worker(settings.model_copy(update={"worker_id": unique_name("w")})))
    try:
        await worker.start()
        async with _client(create_app(settings, plane=plane, authenticator=Authenticator.from_settings(settings.auth))
                           ) as control, _client(worker.worker.http_app()) as data:
            control_health, worker_health = await control.get("/health"), await data.get("/health")
            degraded = {"status": "degraded", "redis": True, "object_store": False}
            # the control plane still takes and runs jobs; a worker cannot run media nodes
            assert (control_health.status_code, _store_fields(control_health)) == (200, degraded)
            assert (worker_health.status_code, _store_fields(worker_health)) == (503, degraded)
            # what needs no store still runs
            job_id = (await plane.submit({"nodes": [{"id": "n", "task": "noop", "plane": "python",
                                                     "params": {"value": 1}}]})).job_id
            assert (await wait_for_job(plane, job_id)).status == "succeeded"

            s3.restart()
            deadline = time.monotonic() + 60
            while True:
                control_health, worker_health = await control.get("/health"), await data.get("/health")
                if control_health.json()["status"] == worker_health.json()["status"] == "ok":
                    break
                assert time.monotonic() < deadline, (control_health.json(), worker_health.json())
                await asyncio.sleep(0.2)
            assert (control_health.status_code, worker_health.status_code) == (200, 200)
            assert control_health.json()["object_store"] and worker_health.json()["object_store"]
    finally:
        await worker.stop()
        await plane.stop(grace_s=0.5)
    # the bucket was made by the planes once the store was back
    store = store_from_settings(settings.store)
    assert store is not None and await store.available()


# -- (d) the API answers 503 for what needs the store ----------------------------------------


async def test_the_api_answers_503_with_retry_after_while_the_store_is_down(settings: Settings, s3: Store):
    authenticator = Authenticator.from_settings(settings.auth)
    headers = {"Authorization": f"Bearer {authenticator.mint('alice', 'user')}"}
    async with planes_with(settings, _registry()) as plane, _client(
            create_app(settings, plane=plane, authenticator=authenticator), headers) as api:
        made = await api.post("/jobs", params={"wait": 30},
                              json={"nodes": [{"id": "w", "task": "write_artifact", "plane": "python"}]})
        assert made.status_code == 200 and made.json()["status"] == "succeeded", made.text
        job_id = made.json()["id"]

        s3.kill()
        answers = {
            "upload": await api.post("/uploads", params={"name": "clip.wav"}, content=b"RIFF....WAVE"),
            "purge": await api.delete(f"/jobs/{job_id}"),
            "links": await api.get(f"/jobs/{job_id}/artifacts"),
        }
        for what, answer in answers.items():
            assert answer.status_code == 503, (what, answer.status_code, answer.text)
            assert answer.headers["content-type"] == "application/problem+json", what
            assert int(answer.headers["retry-after"]) >= 1, what
            assert "object store" in answer.json()["detail"], what
        assert (await api.get(f"/jobs/{job_id}")).status_code == 200  # a failed purge deleted nothing

        s3.restart()
        links = await _retrying(lambda: api.get(f"/jobs/{job_id}/artifacts"))
        assert links.status_code == 200 and [a["name"] for a in links.json()["artifacts"]] == ["out.bin"]
        assert (await _retrying(lambda: api.post("/uploads", params={"name": "clip.wav"},
                                                 content=b"RIFF....WAVE"))).status_code == 201
        assert (await _retrying(lambda: api.delete(f"/jobs/{job_id}"))).status_code == 204


async def _retrying(call: Any, timeout_s: float = 15.0) -> httpx.Response:
    """What a client does with a 503: wait Retry-After and ask again."""
    deadline = time.monotonic() + timeout_s
    while (answer := await call()).status_code == 503 and time.monotonic() < deadline:
        await asyncio.sleep(float(answer.headers.get("retry-after", 1)))
    return answer


def _store_fields(health: httpx.Response) -> dict[str, Any]:
    return {k: health.json().get(k) for k in ("status", "redis", "object_store")}


def _client(app: Any, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://plane", headers=headers)
