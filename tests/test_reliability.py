"""At-least-once delivery made safe: cancel, crashes, leases, dead letters, fencing, events."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
import uuid
import weakref
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from dualplane.common.context import TaskContext
from dualplane.common.errors import TransientError
from dualplane.common.job_state import Mutation
from dualplane.common.models import Handoff
from dualplane.common.registry import task
from dualplane.common.retry import Retry
from dualplane.control_plane import ControlPlane
from dualplane.tasks import default_registry
from tests.helpers import RunningWorker, node, planes_with, spawn_worker, wait_for_job, wait_for_node

pytestmark = pytest.mark.both_topologies


async def test_cancel_stops_a_running_node_within_a_step(control_plane: ControlPlane, worker: RunningWorker):
    graph = {"nodes": [
        {"id": "long", "task": "sleep", "plane": "python", "params": {"seconds": 20, "steps": 200}},
        {"id": "after", "task": "collect", "plane": "control", "needs": ["long"]},
    ]}
    job_id = (await control_plane.submit(graph)).job_id
    await wait_for_node(control_plane, job_id, "long", "running")
    asked = time.time()
    await control_plane.cancel(job_id)
    job = await wait_for_job(control_plane, job_id, timeout_s=5)

    assert job.status == "cancelled"
    assert node(job, "long").status == "cancelled"
    assert node(job, "long").finished_at - asked < 1.0  # one 0.1 s step; the request is pushed
    assert node(job, "after").status == "cancelled"


SLEEP_20_S = {"nodes": [{"id": "long", "task": "sleep", "plane": "python", "params": {"seconds": 20, "steps": 200}}]}


async def test_a_pushed_cancel_reaches_a_worker_that_never_polls(control_plane: ControlPlane, worker_factory):
    await worker_factory(cancel_poll_s=3600.0)
    job_id = (await control_plane.submit(SLEEP_20_S)).job_id
    await wait_for_node(control_plane, job_id, "long", "running")
    await control_plane.cancel(job_id)
    job = await wait_for_job(control_plane, job_id, timeout_s=10)  # the sleep alone lasts 20 s

    assert job.status == "cancelled" and node(job, "long").status == "cancelled"


async def test_a_cancel_whose_push_was_lost_is_found_by_the_flag_poll(control_plane: ControlPlane, worker_factory):
    await worker_factory(cancel_poll_s=0.2)
    job_id = (await control_plane.submit(SLEEP_20_S)).job_id
    await wait_for_node(control_plane, job_id, "long", "running")
    # what request_cancel does, minus the publish (as if the subscription was down then)
    await control_plane.bridge.emit(job_id, Mutation(fields={"cancel": "1"}))
    job = await wait_for_job(control_plane, job_id, timeout_s=10)

    assert job.status == "cancelled" and node(job, "long").status == "cancelled"


async def test_a_cancel_pushed_before_the_claim_reads_the_flag_still_cancels(
    control_plane: ControlPlane, worker_factory, redis
):
    await worker_factory(concurrency=1, cancel_poll_s=3600.0)
    busy = (await control_plane.submit(SLEEP_20_S)).job_id
    await wait_for_node(control_plane, busy, "long", "running")
    queued = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})).job_id
    # the push arrives while the job's flag is still unset: its claim will read no request
    await redis.publish(control_plane.bridge.keys.cancels_channel, queued)
    await control_plane.cancel(busy)  # frees the worker's only slot
    job = await wait_for_job(control_plane, queued)

    assert job.status == "cancelled" and node(job, "a").attempts == 0


async def test_cancel_before_a_worker_picks_the_job_up(control_plane: ControlPlane, worker_factory):
    job_id = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})).job_id
    await control_plane.cancel(job_id)
    await worker_factory()
    job = await wait_for_job(control_plane, job_id)

    assert job.status == "cancelled" and node(job, "a").attempts == 0


async def test_every_event_has_a_gap_free_seq_and_every_published_event_is_stored(
    control_plane: ControlPlane, worker: RunningWorker
):
    """Through the hub's own subscription: on one Redis the pattern subscription, on a cluster
    the job's sharded channel (followed before the job exists, so from its first event)."""
    graph = {"id": f"gap-free-{uuid.uuid4().hex}", "nodes": [
        {"id": "prep", "task": "emit", "plane": "control", "params": {"value": {"text": "x"}}},
        {"id": "s1", "task": "sleep", "plane": "python", "needs": ["prep"], "params": {"seconds": 0.2, "steps": 5}},
        {"id": "s2", "task": "checksum", "plane": "python", "needs": ["prep"], "params": {"text": "y"}},
        {"id": "end", "task": "collect", "plane": "control", "needs": ["s1", "s2"]},
    ]}
    published: list[dict[str, Any]] = []
    subscription = control_plane.bridge.event_subscription(("status", "progress", "data", "audit"))
    await subscription.subscribe(lambda channel, data: published.append(orjson.loads(data)))
    pump = asyncio.create_task(subscription.pump(lambda channel, data: published.append(orjson.loads(data))))
    try:
        await subscription.follow(graph["id"])
        job_id = (await control_plane.submit(graph)).job_id
        assert job_id == graph["id"]
        await wait_for_job(control_plane, job_id)
        stored = [orjson.loads(raw) for raw in await control_plane.bridge.raw_events(job_id)]
        deadline = time.monotonic() + 5
        while len(published) < len(stored) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        await subscription.aclose()

    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert published == stored  # same events, same order, nothing only in Pub/Sub
    assert {e["type"] for e in stored} == {"status", "progress", "data"}
    job = await control_plane.get_job(job_id)
    assert job.seq == len(stored)


async def test_a_malformed_message_is_dead_lettered_with_its_reason(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    keys = control_plane.bridge.keys
    stream = keys.data_stream("default")
    await redis.xadd(stream, {"m": b"{not json"})
    await redis.xadd(stream, {"other": b"field"})
    await redis.xadd(stream, {"m": orjson.dumps({"job_id": "ghost", "handoff_seq": "x", "graph": {}})})

    deadline = time.monotonic() + 10
    while len(dead := await control_plane.bridge.dead_letters()) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 3
    assert any("invalid handoff message" in r for r in reasons)
    assert any("no 'm' field" in r for r in reasons)
    assert {d["stream"] for d in dead} == {stream}
    assert await control_plane.bridge.pending_count(stream) == 0  # acknowledged, not stuck


async def test_an_invalid_handoff_for_a_known_job_fails_the_job_with_the_reason(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    # queued for a pool nobody serves, so only the broken message below can touch it
    job_id = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python",
                                                     "pool": "gpu"}]})).job_id
    await redis.xadd(control_plane.bridge.keys.stream_for_job("python:default", job_id),
                     {"m": orjson.dumps({"job_id": job_id, "handoff_seq": 1, "graph": {"nodes": "broken"}})})
    job = await wait_for_job(control_plane, job_id, timeout_s=10)

    assert job.status == "failed"
    assert job.error.startswith("dead-lettered: invalid handoff message") and "graph.nodes" in job.error
    (dead,) = await control_plane.bridge.dead_letters()
    assert dead["job"] == job_id
    events = await control_plane.bridge.events(job_id)
    assert events[-1].status == "failed" and events[-1].node_id is None


async def test_a_stale_duplicate_handoff_is_rejected_by_the_fence(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    graph = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
    job_id = (await control_plane.submit(graph)).job_id
    job = await wait_for_job(control_plane, job_id)
    stream = control_plane.bridge.keys.stream_for_job("python:default", job_id)
    events_before = job.seq
    # replay the original handoff (seq 1), as a crashed producer's duplicate would
    replay = Handoff(job_id=job_id, handoff_seq=1, graph=job.graph).model_dump_json()
    await redis.xadd(stream, {"m": replay})

    deadline = time.monotonic() + 10
    while worker.worker.metrics.stale_handoffs._value.get() < 1:
        assert time.monotonic() < deadline, "the stale handoff was not rejected"
        await asyncio.sleep(0.05)
    after = await control_plane.get_job(job_id)
    assert after.seq == events_before  # nothing ran, nothing was mirrored
    assert node(after, "a").attempts == 1
    assert await control_plane.bridge.pending_count(stream) == 0


async def test_a_message_past_the_delivery_limit_goes_to_the_dead_letter_stream(
    control_plane: ControlPlane, worker_factory, redis
):
    keys = control_plane.bridge.keys
    job_id = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})).job_id
    stream = keys.stream_for_job("python:default", job_id)
    await control_plane.bridge.ensure_group(stream)
    # consumers that took the message and died, again and again
    (entries,) = await redis.xreadgroup("workers", "ghost-1", {stream: ">"}, count=1)
    message_id = entries[1][0][0]
    for ghost in range(2, 7):
        await redis.xclaim(stream, "workers", f"ghost-{ghost}", 0, [message_id])
    await worker_factory(max_deliveries=5)

    job = await wait_for_job(control_plane, job_id, timeout_s=10)
    assert job.status == "failed" and "delivered" in job.error
    (dead,) = await control_plane.bridge.dead_letters()
    assert dead["job"] == job_id and "limit 5" in dead["reason"]
    assert node(job, "a").attempts == 0


async def test_sigterm_releases_unfinished_work_to_another_worker(control_plane: ControlPlane, worker_factory):
    first = await worker_factory(shutdown_grace_s=0.2)
    graph = {"nodes": [{"id": "long", "task": "sleep", "plane": "python", "params": {"seconds": 1.5, "steps": 15}}]}
    job_id = (await control_plane.submit(graph)).job_id
    await wait_for_node(control_plane, job_id, "long", "running")
    await first.stop()  # what SIGTERM does: grace, then release
    await worker_factory()
    job = await wait_for_job(control_plane, job_id, timeout_s=15)

    assert job.status == "succeeded"
    assert node(job, "long").attempts == 2


async def test_a_worker_killed_mid_node_is_reclaimed_and_completed_nodes_never_rerun(
    control_plane: ControlPlane, settings, worker_factory
):
    victim = spawn_worker(settings, "victim")
    try:
        graph = {"nodes": [
            {"id": "first", "task": "checksum", "plane": "python", "params": {"text": "done once"}},
            {"id": "long", "task": "sleep", "plane": "python", "needs": ["first"],
             "params": {"seconds": 2.0, "steps": 20}},
            {"id": "end", "task": "collect", "plane": "control", "needs": ["long"]},
        ]}
        job_id = (await control_plane.submit(graph)).job_id
        await wait_for_node(control_plane, job_id, "long", "running", timeout_s=30)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        rescuer = await worker_factory()
        job = await wait_for_job(control_plane, job_id, timeout_s=30)
    finally:
        if victim.poll() is None:
            victim.kill()

    assert job.status == "succeeded"
    assert node(job, "first").attempts == 1  # completed before the crash: never run again
    assert node(job, "long").attempts == 2
    assert rescuer.worker.metrics.reclaimed._value.get() >= 1
    runs = [e for e in await control_plane.bridge.events(job_id) if e.node_id == "first" and e.status == "running"]
    assert len(runs) == 1


async def test_the_lease_heartbeat_keeps_a_node_longer_than_the_lease_claimed(
    control_plane: ControlPlane, worker_factory
):
    holder = await worker_factory()
    graph = {"nodes": [{"id": "long", "task": "sleep", "plane": "python", "params": {"seconds": 3.0, "steps": 6}}]}
    job_id = (await control_plane.submit(graph)).job_id
    await wait_for_node(control_plane, job_id, "long", "running")
    bystander = await worker_factory()  # would reclaim the message if the lease lapsed (lease is 1 s)
    job = await wait_for_job(control_plane, job_id, timeout_s=15)

    assert job.status == "succeeded"
    assert node(job, "long").attempts == 1
    assert bystander.worker.metrics.reclaimed._value.get() == 0
    assert holder.worker.consumer._lease.beats >= 3


async def test_sigterm_on_a_worker_process_hands_its_work_on_and_exits(control_plane: ControlPlane, settings,
                                                                        worker_factory, redis):
    import httpx

    from dualplane.devstack.services import free_port

    port = free_port()
    proc = spawn_worker(settings, "terminated", extra={"DUALPLANE_WORKER_PORT": str(port),
                                                        "DUALPLANE_SHUTDOWN_GRACE_S": "0.3"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = await client.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "worker HTTP never came up"
                    await asyncio.sleep(0.1)
            assert health.status_code == 200 and health.json()["worker_id"] == "terminated"
            graph = {"nodes": [{"id": "long", "task": "sleep", "plane": "python",
                                "params": {"seconds": 3.0, "steps": 30}}]}
            job_id = (await control_plane.submit(graph)).job_id
            await wait_for_node(control_plane, job_id, "long", "running", timeout_s=20)
            metrics = (await client.get("/metrics")).text
            assert "dualplane_busy_jobs 1.0" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        await worker_factory()
        job = await wait_for_job(control_plane, job_id, timeout_s=15)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert job.status == "succeeded"
    assert node(job, "long").attempts == 2
    keys = control_plane.bridge.keys
    assert await redis.exists(keys.worker("terminated")) == 0


async def test_the_key_prefix_separates_deployments(settings, redis, worker_factory):
    other = ControlPlane(settings.model_copy(update={"key_prefix": "other:"}))
    await other.start()
    try:
        await worker_factory(key_prefix="other:")
        job_id = (await other.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})).job_id
        job = await wait_for_job(other, job_id)
    finally:
        await other.stop(0.5)
    keys = {k.decode() for k in await redis.keys("*")}
    assert job.status == "succeeded"
    assert keys and all(k.startswith("other:") for k in keys), keys


# -- a retried attempt lets go of what the failed one held ------------------------------------


class _Weights:
    """Stands in for a model a task built for itself (a UNet being trained)."""


class HoldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _hold_then_fail_task(held: list[weakref.ref[_Weights]]) -> Any:
    @task("hold_then_fail", plane="python", params=HoldParams, retry=Retry(max_attempts=2, backoff_s=2.0))
    def hold_then_fail(ctx: TaskContext, p: HoldParams) -> dict[str, Any]:
        weights = _Weights()
        held.append(weakref.ref(weights))
        if ctx.attempt == 1:
            raise TransientError("the store hiccuped")
        return {"attempt": ctx.attempt}

    return hold_then_fail


async def test_a_failed_attempt_lets_go_of_its_locals_before_the_retry_delay(settings):
    """The traceback of a retried error holds the task's frames, and with them whatever the task
    had built (on a GPU: a model in VRAM), for the whole backoff and, in a reference cycle,
    until a full collection: the retry would hold two copies."""
    held: list[weakref.ref[_Weights]] = []
    registry = default_registry()
    registry.add(_hold_then_fail_task(held).__task_spec__)
    async with planes_with(settings, registry) as plane:
        gc.disable()  # freed by reference counting, or not at all
        try:
            job_id = (await plane.submit({"nodes": [{"id": "h", "task": "hold_then_fail", "plane": "python"}]})).job_id
            deadline = time.monotonic() + 10
            while not any(e.message and e.message.startswith("retrying") for e in await plane.bridge.events(job_id)):
                assert time.monotonic() < deadline, "no retry"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            alive_in_backoff = [ref() is not None for ref in held]
            job = await wait_for_job(plane, job_id)
        finally:
            gc.enable()
    assert job.status == "succeeded" and node(job, "h").attempts == 2
    assert alive_in_backoff == [False]
