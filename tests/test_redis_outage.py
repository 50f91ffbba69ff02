"""Redis trouble reaches clients as 503 problem+json with Retry-After, never a bare 500; waits
hold no pooled connection; the client retries outages with its Idempotency-Key, so a retry
never duplicates a job."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis import exceptions as redis_exceptions

from dualplane.client import AsyncClient
from dualplane.common.bridge import Bridge
from dualplane.common.errors import BridgeError, RedisUnavailable, Unavailable, UnknownJob
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.data_plane import Worker
from dualplane.devstack.services import RedisServer, start_redis
from tests.helpers import RunningWorker, unique_name, wait_for_job

NOOP = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
SLOW = {"nodes": [{"id": "s", "task": "sleep", "plane": "python", "params": {"seconds": 3, "steps": 3}}]}


class Served:
    """A control plane on its own Redis (which a test may stop), its app and clients."""

    def __init__(self, redis: RedisServer, plane: ControlPlane, app, authenticator: Authenticator) -> None:
        self.redis, self.plane, self.app, self.authenticator = redis, plane, app, authenticator

    def client(self, user: str) -> httpx.AsyncClient:
        token = self.authenticator.mint(user)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://cp",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def restart_redis(self) -> None:
        self.redis = start_redis(self.redis.data_dir, appendonly=True, port=self.redis.port)


@pytest.fixture
async def served_factory(settings: Settings, tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    started: list[tuple[Served, object]] = []

    async def start(**overrides: object) -> Served:
        redis = start_redis(tmp_path / unique_name("redis"), appendonly=True)
        local = settings.model_copy(update={"redis_url": redis.url, **overrides})
        plane = ControlPlane(local, metrics_registry=CollectorRegistry())
        await plane.start()
        app = create_app(local, plane=plane)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        served = Served(redis, plane, app, Authenticator.from_settings(local.auth))
        started.append((served, lifespan))
        return served

    yield start
    for served, lifespan in started:
        await lifespan.__aexit__(None, None, None)
        await served.plane.stop(0.5)
        served.redis.stop()


def _is_503(response: httpx.Response) -> bool:
    return (response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
            and int(response.headers["retry-after"]) >= 1)


async def test_while_redis_is_down_the_api_answers_503_with_retry_after(served_factory):
    served = await served_factory(redis_pool_timeout_s=1.0)
    alice = served.client("alice")
    job_id = (await alice.post("/jobs", json=NOOP)).json()["id"]
    served.redis.stop()
    down = [await alice.get(f"/jobs/{job_id}"), await alice.post("/jobs", json=NOOP), await alice.get("/jobs"),
            await alice.get(f"/jobs/{job_id}/events"), await alice.post(f"/jobs/{job_id}/cancel"),
            await alice.get("/me/preferences")]
    health = await alice.get("/health")
    assert all(_is_503(r) for r in down), [(r.status_code, r.text[:200]) for r in down]
    assert health.status_code == 503 and health.json()["redis"] is False
    served.restart_redis()
    await asyncio.sleep(0.2)
    back = await alice.get(f"/jobs/{job_id}")
    await alice.aclose()

    assert back.status_code == 200 and back.json()["id"] == job_id  # the AOF kept it


async def test_waiting_requests_hold_no_connection_and_each_user_has_a_cap(served_factory):
    served = await served_factory(redis_max_connections=8, max_waits_per_user=200)
    alice, bob = served.client("alice"), served.client("bob")
    waits = [asyncio.create_task(alice.post("/jobs", params={"wait": 20}, json=SLOW)) for _ in range(120)]
    await asyncio.sleep(1.0)  # every wait is registered; none of them has finished
    reads = await asyncio.gather(*(bob.get("/jobs") for _ in range(50)))
    submitted = await bob.post("/jobs", json=NOOP)
    for task in waits:
        task.cancel()
    await asyncio.gather(*waits, return_exceptions=True)

    capped = await served_factory(max_waits_per_user=3)
    carol = capped.client("carol")
    held = [asyncio.create_task(carol.post("/jobs", params={"wait": 5}, json=SLOW)) for _ in range(3)]
    await asyncio.sleep(0.5)
    refused = await carol.post("/jobs", params={"wait": 5}, json=SLOW)
    other = await capped.client("dave").post("/jobs", params={"wait": 0.1}, json=SLOW)
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    for client in (alice, bob, carol):
        await client.aclose()

    assert [r.status_code for r in reads] == [200] * 50
    assert submitted.status_code == 201
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "waits at once" in refused.json()["detail"]
    assert other.status_code == 202  # the cap is per user


async def test_the_client_retries_an_outage_with_its_idempotency_key_and_makes_one_job(served_factory):
    served = await served_factory(redis_pool_timeout_s=0.5)
    token = served.authenticator.mint("erin")
    client = AsyncClient("http://cp", token, transport=httpx.ASGITransport(app=served.app))
    served.redis.stop()

    async def bring_redis_back() -> None:
        await asyncio.sleep(1.0)
        served.restart_redis()

    back = asyncio.create_task(bring_redis_back())
    job = await client.submit(NOOP)  # 503s first, then the retry with the same key goes through
    await back
    again = await client.submit(NOOP, idempotency_key="fixed-key")
    repeat = await client.submit(NOOP, idempotency_key="fixed-key")  # what a retry after a lost answer sends
    listed = await client.list_jobs()
    await client.aclose()

    assert job["status"] in ("queued", "running", "succeeded")
    assert again["id"] == repeat["id"]
    assert sorted(j["id"] for j in listed["jobs"]) == sorted({job["id"], again["id"]})


async def test_a_worker_reports_redis_trouble_on_health_and_recovers(served_factory, settings):
    served = await served_factory()
    worker = RunningWorker(Worker(settings.model_copy(update={"redis_url": served.redis.url,
                                                             "worker_id": unique_name("w")})))
    await worker.start()
    try:
        app = worker.worker.http_app()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as client:
            served.redis.stop()
            down = await client.get("/health")
            served.restart_redis()
            job = None
            for _ in range(100):
                try:
                    job = await served.plane.submit(NOOP)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            assert job is not None
            done = await wait_for_job(served.plane, job.job_id, timeout_s=20)
            up = await client.get("/health")
    finally:
        await worker.stop()
    assert down.status_code == 503 and down.json()["redis"] is False
    assert done.status == "succeeded"
    assert up.status_code == 200


async def test_the_bridge_translates_every_redis_error(settings: Settings, redis, tmp_path: Path):
    """No Redis error leaves the bridge: one Redis refuses (a wrong type) is a BridgeError, an
    internal fault (500); a Redis that is down is a RedisUnavailable (503), for direct calls and
    batched script calls alike; each keeps the Redis error as its cause."""
    bridge = await Bridge(settings.bridge_config()).connect()
    try:
        await redis.hset(bridge.keys.preferences("alice"), "theme", "dark")
        with pytest.raises(BridgeError) as refused:
            await bridge.get_preferences("alice")
        assert not isinstance(refused.value, Unavailable) and refused.value.status == 500
        assert isinstance(refused.value.__cause__, redis_exceptions.ResponseError)
        await redis.set(bridge.keys.job("not-a-hash"), "x")
        with pytest.raises(BridgeError) as script_refused:
            await bridge.claim("not-a-hash", 1)
        assert not isinstance(script_refused.value, Unavailable)
        assert isinstance(script_refused.value.__cause__, redis_exceptions.ResponseError)
    finally:
        await bridge.close()

    server = start_redis(tmp_path / unique_name("redis"))
    bridge = await Bridge(settings.model_copy(update={"redis_url": server.url}).bridge_config()).connect()
    try:
        server.stop()
        with pytest.raises(RedisUnavailable) as down:
            await bridge.job_status("j")
        assert down.value.status == 503 and isinstance(down.value.__cause__, redis_exceptions.ConnectionError)
        with pytest.raises(RedisUnavailable):
            await bridge.claim("j", 1)
    finally:
        await bridge.close()


async def test_a_redis_that_stops_answering_fails_batched_and_direct_calls_and_they_recover(
        settings: Settings, tmp_path: Path):
    """A frozen Redis (SIGSTOP: the socket stays open, nothing answers) fails a pipelined script
    call and a raw read once the socket timeout has passed, as a RedisUnavailable; once Redis
    answers again, the next calls work (the timed-out connection is not reused mid-reply)."""
    server = start_redis(tmp_path / unique_name("redis"))
    url = f"{server.url}?socket_timeout=0.5"
    bridge = await Bridge(settings.model_copy(update={"redis_url": url}).bridge_config()).connect()
    try:
        assert not (await bridge.claim("j", 1)).ok  # the connection is open and warm
        server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisUnavailable) as batched:
                await asyncio.wait_for(bridge.claim("j", 1), 30)
            assert isinstance(batched.value.__cause__, redis_exceptions.TimeoutError)
            with pytest.raises(RedisUnavailable) as direct:
                await asyncio.wait_for(bridge.get_job("j"), 30)  # the raw HGETALL of the hot reads
            assert isinstance(direct.value.__cause__, redis_exceptions.TimeoutError)
        finally:
            server.process.send_signal(signal.SIGCONT)
        claim = await bridge.claim("j", 1)
        assert not claim.ok and claim.gone
        with pytest.raises(UnknownJob):
            await bridge.get_job("j")
    finally:
        await bridge.close()
        server.stop()
