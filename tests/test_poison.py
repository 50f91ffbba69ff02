"""Whatever is wrong with one message, that message is dead-lettered with the reason and the
plane keeps consuming; a consume loop that dies anyway is logged, lets go of its leases and
turns the plane's health red."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from dualplane.common.consumer import Consumer
from dualplane.control_plane import ControlPlane, create_app
from tests.helpers import RunningWorker, node, spawn_worker, wait_for_dead_letters, wait_for_job
from tests.probe import BrokenLoop, probe_registry

pytestmark = pytest.mark.both_topologies

NOOP = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": 1}}]}


def _handoff(job_id: str, nodes: list[dict]) -> bytes:
    return orjson.dumps({"job_id": job_id, "handoff_seq": 1, "graph": {"nodes": nodes}})


@pytest.mark.parametrize("nodes, reason", [
    ([{"id": "a", "task": "noop", "plane": "python", "needs": ["b"]},
      {"id": "b", "task": "noop", "plane": "python", "needs": ["a"]}], "dependency cycle"),
    ([{"id": "a", "task": "noop", "plane": "python", "needs": ["ghost"]}], "unknown node 'ghost'"),
    ([{"id": "a", "task": "noop", "plane": "python", "needs": ["a"]}], "dependency cycle"),
    ([{"id": "a", "task": "noop", "plane": "python"}, {"id": "a", "task": "noop", "plane": "python"}],
     "duplicate node id"),
])
async def test_a_handoff_whose_graph_cannot_run_is_dead_lettered_and_the_worker_goes_on(
    control_plane: ControlPlane, worker: RunningWorker, redis, nodes, reason
):
    # a known job, queued where no worker reads, so only the broken message can touch it
    job_id = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python",
                                                     "pool": "gpu"}]})).job_id
    stream = control_plane.bridge.keys.stream_for_job("python:default", job_id)
    await redis.xadd(stream, {"m": _handoff(job_id, nodes)})
    (dead,) = await wait_for_dead_letters(control_plane, 1)
    healthy = await control_plane.get_job((await control_plane.submit(NOOP)).job_id)
    after = await wait_for_job(control_plane, healthy.id)

    assert reason in dead["reason"] and dead["job"] == job_id
    failed = await wait_for_job(control_plane, job_id)
    assert failed.status == "failed" and reason in failed.error
    assert after.status == "succeeded"  # the loop kept consuming
    assert worker.worker.consumer.failure is None and worker.worker.consumer.health()["ok"]
    assert await control_plane.bridge.pending_count(stream) == 0


async def test_a_message_with_bytes_that_are_not_utf8_is_dead_lettered_once(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    stream = control_plane.bridge.keys.data_stream("default")
    await redis.xadd(stream, {b"m": b'{"job_id": "\xff\xfe", "handoff_seq": 1}'})
    await redis.xadd(stream, {b"\xc3\x28": b"\xa0\xa1", b"m": b"\xff"})
    dead = await wait_for_dead_letters(control_plane, 2)
    job = await wait_for_job(control_plane, (await control_plane.submit(NOOP)).job_id)
    await asyncio.sleep(0.5)  # a message that is redelivered would add more dead letters meanwhile

    assert len(await control_plane.bridge.dead_letters()) == 2
    assert all(d["reason"].startswith("invalid handoff message") for d in dead)
    assert any("\\xc3(" in d["fields"] for d in dead)  # kept, readable, not lost
    assert job.status == "succeeded" and node(job, "a").output == {"value": 1}
    assert await control_plane.bridge.pending_count(stream) == 0


async def test_reads_that_keep_failing_turn_the_consumer_unhealthy_until_they_work_again(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    consumer = worker.worker.consumer
    for stream in consumer.streams:  # every partition's
        await redis.delete(stream)
        await redis.set(stream, b"not a stream")  # every XREADGROUP now fails (WRONGTYPE)
    deadline = time.monotonic() + 15
    while consumer.health()["ok"]:
        assert time.monotonic() < deadline, "the consumer never said its reads fail"
        await asyncio.sleep(0.1)
    unhealthy = consumer.health()
    for stream in consumer.streams:
        await redis.delete(stream)  # the group is gone with it: the consumer creates it again
    job = await wait_for_job(control_plane, (await control_plane.submit(NOOP)).job_id, timeout_s=15)

    assert "WRONGTYPE" in unhealthy["error"]
    assert job.status == "succeeded" and consumer.health()["ok"]


class _BrokenConsumer(Consumer):
    """A consumer whose loop meets a bug after its first message (fault injection into our own
    code, to see what the plane does when the loop dies)."""

    async def _poll(self) -> None:
        if self._inflight:
            raise RuntimeError("a bug in the consume loop")
        await super()._poll()


async def test_a_dead_consume_loop_lets_its_leases_lapse_and_says_why(control_plane: ControlPlane, settings,
                                                                    worker_factory):
    from dualplane.common.executor import Executor
    from dualplane.tasks import default_registry

    executor = Executor(default_registry(), "python", bridge=control_plane.bridge, concurrency=2)
    broken = _BrokenConsumer(control_plane.bridge, executor, lane="python:default", name="broken", concurrency=2)
    loop = asyncio.create_task(broken.run())
    job_id = (await control_plane.submit({"nodes": [{"id": "s", "task": "sleep", "plane": "python",
                                                     "params": {"seconds": 30, "steps": 300}}]})).job_id
    with pytest.raises(RuntimeError, match="a bug in the consume loop"):
        await asyncio.wait_for(loop, 10)
    health = broken.health()
    rescuer = await worker_factory()  # the dead loop's message is reclaimed once its lease lapses
    await asyncio.sleep(0)
    await control_plane.cancel(job_id)
    job = await wait_for_job(control_plane, job_id, timeout_s=20)
    await broken.stop(grace_s=0)

    assert health == {"ok": False, "error": "consume loop died: RuntimeError: a bug in the consume loop"}
    assert job.status == "cancelled"
    assert rescuer.worker.metrics.reclaimed._value.get() >= 1


async def test_a_worker_process_whose_loop_died_says_so_exits_non_zero_and_its_job_is_taken_over(
    settings, worker_factory
):
    from dualplane.devstack.services import free_port

    port = free_port()
    registry = probe_registry()
    plane = ControlPlane(settings, registry=registry, metrics_registry=CollectorRegistry())
    await plane.start()
    broken = spawn_worker(settings, "broken", module="tests.probe",
                          extra={"PROBE_BREAK_LOOP": "1", "DUALPLANE_WORKER_PORT": str(port),
                                 "DUALPLANE_SHUTDOWN_GRACE_S": "0"})
    try:
        job_id = (await plane.submit({"nodes": [{"id": "s", "task": "sleep", "plane": "python",
                                                 "params": {"seconds": 0.5, "steps": 5}}]})).job_id
        code = await asyncio.to_thread(broken.wait, 30)
        rescuer = await worker_factory()
        job = await wait_for_job(plane, job_id, timeout_s=20)
    finally:
        if broken.poll() is None:
            broken.kill()
        await plane.stop(0.5)

    assert code == 1
    assert job.status == "succeeded"
    assert rescuer.worker.metrics.reclaimed._value.get() == 1  # the broken worker held it when it died


async def test_a_control_plane_whose_runner_died_says_so_on_health_and_asks_to_exit(settings):

    plane = ControlPlane(settings, metrics_registry=CollectorRegistry())
    plane.runner._poll = BrokenLoop(plane.runner)  # type: ignore[method-assign]
    await plane.start()
    app = create_app(settings, plane=plane)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp") as client:
        healthy = await client.get("/health")
        await plane.submit({"nodes": [{"id": "c", "task": "emit", "plane": "control", "params": {"value": {}}},
                                      {"id": "s", "task": "sleep", "plane": "python", "needs": ["c"],
                                       "params": {"seconds": 5}}]})
        await asyncio.wait_for(plane.failed.wait(), 10)  # what makes `dualplane control-plane` exit 1
        health = await client.get("/health")
    await plane.stop(0.5)

    assert healthy.status_code == 200
    assert health.status_code == 503 and "consume loop died" in health.json()["consumer"]


async def test_a_node_whose_task_the_worker_lacks_fails_saying_so_instead_of_holding_the_job(
    settings, worker_factory
):
    plane = ControlPlane(settings, registry=probe_registry(), metrics_registry=CollectorRegistry())
    await plane.start()
    await worker_factory()  # the default catalog: no `probe`
    try:
        job_id = (await plane.submit({"nodes": [
            {"id": "a", "task": "noop", "plane": "python", "params": {"value": 1}},
            {"id": "p", "task": "probe", "plane": "python", "needs": ["a"], "params": {"seconds": 0}},
            {"id": "after", "task": "noop", "plane": "python", "needs": ["p"], "params": {"value": 2}},
        ]})).job_id
        job = await wait_for_job(plane, job_id, timeout_s=20)
    finally:
        await plane.stop(0.5)

    assert job.status == "failed"
    assert node(job, "a").status == "succeeded"
    assert node(job, "p").status == "failed"
    assert node(job, "p").error.type == "TaskNotAvailable" and "'probe'" in node(job, "p").error.message
    assert node(job, "after").status == "skipped"
