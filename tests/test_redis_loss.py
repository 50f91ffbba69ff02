"""Redis losing data: an emptied Redis (no persistence, a failover to an empty replica, a
FLUSHALL), a lost stream entry, and a restart of a Redis that keeps an AOF."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.reconciler import Reconciler
from dualplane.data_plane import Worker
from dualplane.devstack.services import RedisServer, start_redis
from dualplane.devstack.stack import LocalStack
from tests.helpers import RunningWorker, node, unique_name, wait_for_job

pytestmark = pytest.mark.both_topologies

NOOP = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": "x"}}]}


async def test_consumers_create_their_groups_again_after_redis_was_emptied(
    control_plane: ControlPlane, worker: RunningWorker, redis
):
    before = await wait_for_job(control_plane, (await control_plane.submit(NOOP)).job_id)
    await redis.flushall()  # streams, groups and jobs gone, as after a restart without persistence
    after = await wait_for_job(control_plane, (await control_plane.submit(NOOP)).job_id, timeout_s=15)
    graph = {"nodes": [{"id": "c", "task": "emit", "plane": "control", "params": {"value": {"n": 1}}},
                       {"id": "p", "task": "noop", "plane": "python", "needs": ["c"]}]}
    both_lanes = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=15)

    assert before.status == after.status == both_lanes.status == "succeeded"
    assert worker.worker.consumer.health()["ok"] and control_plane.runner.health()["ok"]


async def test_a_job_whose_stream_entry_was_lost_is_found_and_handed_on_again(
    control_plane: ControlPlane, worker_factory, redis
):
    keys = control_plane.bridge.keys
    job_id = (await control_plane.submit(NOOP)).job_id  # no worker yet: it waits in the stream
    await redis.delete(keys.stream_for_job("python:default", job_id))  # an eviction, an XTRIM, a failover that missed it
    report = await control_plane.reconciler.run_once()
    await worker_factory()
    job = await wait_for_job(control_plane, job_id, timeout_s=15)
    again = await control_plane.reconciler.run_once()

    assert report.requeued == [job_id]
    assert job.status == "succeeded" and node(job, "a").attempts == 1
    events = await control_plane.bridge.events(job_id)
    assert any(e.data and "requeued" in e.data for e in events)
    assert again.requeued == [] and again.scanned == 0  # finished jobs leave the active index
    assert control_plane.metrics.requeued._value.get() == 1


async def test_budgeted_reconciler_passes_go_on_where_the_last_stopped_and_cover_every_job(
    control_plane: ControlPlane, redis
):
    keys = control_plane.bridge.keys
    ids = {(await control_plane.submit(NOOP)).job_id for _ in range(7)}  # no worker: all wait
    for stream in keys.lane_streams("python:default"):
        await redis.delete(stream)
    reconciler = Reconciler(control_plane.bridge, interval_s=0, pass_budget=3)
    passes = [await reconciler.run_once(budget=3) for _ in range(4)]

    assert [p.scanned for p in passes[:3]] == [3, 3, 1]  # a slice each, then the rest of the sweep
    assert {j for p in passes[:3] for j in p.requeued} == ids  # every lost entry found once
    assert passes[3].scanned == 3 and passes[3].requeued == []  # the next sweep starts over: all there now


async def test_the_reconciler_leaves_jobs_whose_entry_is_there_alone(control_plane: ControlPlane, redis):
    job_id = (await control_plane.submit(NOOP)).job_id
    report = await control_plane.reconciler.run_once()
    job = await control_plane.get_job(job_id)

    assert report.scanned == 1 and report.requeued == []
    assert job.handoff_seq == 1 and await control_plane.bridge.stream_length(
        control_plane.bridge.keys.stream_for_job("python:default", job_id)) == 1


async def test_an_emptied_redis_is_reported_by_the_reconciler(control_plane: ControlPlane, redis):
    first = await control_plane.reconciler.run_once()
    await redis.flushall()
    second = await control_plane.reconciler.run_once()
    third = await control_plane.reconciler.run_once()

    assert (first.lost_data, second.lost_data, third.lost_data) == (False, True, False)
    assert control_plane.metrics.redis_data_lost._value.get() == 1


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = start_redis(tmp_path / "redis", appendonly=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.single_redis_only("restarts its own redis-server")
async def test_jobs_survive_a_restart_of_a_redis_that_keeps_an_aof(settings: Settings, own_redis: RedisServer,
                                                                   tmp_path: Path):
    local = settings.model_copy(update={"redis_url": own_redis.url})
    plane = ControlPlane(local, metrics_registry=CollectorRegistry())
    await plane.start()
    worker = RunningWorker(Worker(local.model_copy(update={"worker_id": unique_name("w")})))
    try:
        queued = [(await plane.submit(NOOP)).job_id for _ in range(20)]
        own_redis.stop()  # SIGTERM: Redis writes out its AOF on the way down
        restarted = start_redis(own_redis.data_dir, appendonly=True, port=own_redis.port)
        try:
            await worker.start()
            jobs = [await wait_for_job(plane, job_id, timeout_s=20) for job_id in queued]
        finally:
            await worker.stop()
            restarted.stop()
    finally:
        await plane.stop(grace_s=0.5)
    assert [j.status for j in jobs] == ["succeeded"] * 20


async def test_the_local_stack_runs_its_redis_with_an_aof_under_the_state_dir(tmp_path: Path):
    stack = LocalStack(Settings(redis_url=None), tmp_path, announce=lambda _line: None)
    try:
        stack.state.create()  # what start() does first
        stack._start_redis()
        client = aioredis.Redis.from_url(stack.redis_url)
        config = await client.config_get("appendonly")
        directory = (await client.config_get("dir"))["dir"]
        await client.aclose()
    finally:
        stack.stop()
    assert config == {"appendonly": "yes"}
    assert Path(directory) == tmp_path.resolve() / ".dualplane" / "redis"
