"""Slot partitions on one Redis: a job's keys and its messages live in the partition its id
hashes to, every lane is a stream per partition, and everything that reads across jobs (the
consumers, the listing, the reconciler, dead letters, the queue metrics) covers every partition."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from dualplane.common.bridge.keys import Keys, partition_tags
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.listing import JobFilter, list_jobs
from dualplane.control_plane.reconciler import Reconciler
from tests.helpers import RunningWorker, wait_for_job

PARTITIONS = 4
THREE_NODES = {"nodes": [
    {"id": "plan", "task": "emit", "plane": "control", "params": {"value": {"n": 1}}},
    {"id": "run", "task": "noop", "plane": "python", "needs": ["plan"]},
    {"id": "end", "task": "collect", "plane": "control", "needs": ["run"]},
]}
ONE_NODE = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"redis_partitions": PARTITIONS})


@pytest.fixture
async def plane_and_worker(settings: Settings) -> AsyncIterator[ControlPlane]:
    from dualplane.data_plane import Worker

    plane = ControlPlane(settings)
    await plane.start()
    worker = RunningWorker(Worker(settings.model_copy(update={"worker_id": "w-partitions"})))
    await worker.start()
    try:
        yield plane
    finally:
        await worker.stop()
        await plane.stop(grace_s=0.5)


def _job_ids_per_partition(keys: Keys, ids: list[str]) -> Counter[int]:
    return Counter(keys.partition(job_id) for job_id in ids)


def test_partition_tags_spread_their_slots_over_the_slot_space() -> None:
    for count in (1, 3, 16, 100):
        tags = partition_tags(count)
        slots = [key_slot(tag[1:-1].encode()) for tag in tags]
        for i, slot in enumerate(slots):
            assert i * REDIS_CLUSTER_HASH_SLOTS // count <= slot < (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        assert len(set(tags)) == count


def test_every_key_of_a_job_and_its_lane_entries_share_one_slot() -> None:
    keys = Keys("dp:", PARTITIONS)
    for job_id in ("j-1", "j-2", "abc", "x" * 40):
        p = keys.partition(job_id)
        slots = {key_slot(k.encode()) for k in (
            keys.job(job_id), keys.events(job_id), keys.stream_for_job("control", job_id),
            keys.stream_for_job("python:gpu", job_id), keys.jobs_index(p), keys.active_jobs(p),
            keys.user_jobs("alice", p))}
        assert len(slots) == 1, job_id
        assert keys.stream_partition(keys.stream_for_job("python:gpu", job_id)) == p
        assert keys.lane_of_stream(keys.stream_for_job("python:gpu", job_id)) == "python:gpu"


async def test_jobs_of_every_partition_run_through_both_planes(plane_and_worker: ControlPlane) -> None:
    plane = plane_and_worker
    ids = [(await plane.submit(THREE_NODES)).job_id for _ in range(24)]
    jobs = [await wait_for_job(plane, job_id) for job_id in ids]

    assert {job.status for job in jobs} == {"succeeded"}
    assert len(_job_ids_per_partition(plane.bridge.keys, ids)) == PARTITIONS  # all were used
    for stream in plane.bridge.keys.lane_streams("control") + plane.bridge.keys.lane_streams("python:default"):
        assert await plane.bridge.stream_length(stream) == 0  # every hop acknowledged and deleted


async def test_listing_merges_the_partitions_newest_first_across_pages(
        api, plane_and_worker: ControlPlane) -> None:
    plane = plane_and_worker
    ids = [(await plane.submit(ONE_NODE, user="alice")).job_id for _ in range(13)]
    for job_id in ids:
        await wait_for_job(plane, job_id)
    seen: list[str] = []
    cursor = None
    while True:
        page = await list_jobs(plane.bridge, JobFilter(user="alice"), limit=5, cursor=cursor)
        seen += [job["id"] for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == list(reversed(ids))
    assert await plane.bridge.job_counts() == (13, 0)


async def test_a_lost_entry_in_any_partition_is_handed_on_again(settings: Settings, redis) -> None:
    plane = ControlPlane(settings)
    await plane.start()
    try:
        # no worker: the jobs wait on their partitions' data streams
        ids = [(await plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python", "pool": "gpu"}]},
                                   )).job_id for _ in range(8)]
        keys = plane.bridge.keys
        for stream in keys.lane_streams("python:gpu"):
            await redis.delete(stream)
        report = await Reconciler(plane.bridge, interval_s=0).run_once()

        assert sorted(report.requeued) == sorted(ids)
        lengths = [await plane.bridge.stream_length(s) for s in keys.lane_streams("python:gpu")]
        assert sum(lengths) == 8 and sum(1 for n in lengths if n) == len(_job_ids_per_partition(keys, ids))
    finally:
        await plane.stop(grace_s=0.5)


async def test_a_message_on_another_partitions_stream_is_dead_lettered_and_its_job_left_alone(
        plane_and_worker: ControlPlane, redis) -> None:
    plane = plane_and_worker
    keys = plane.bridge.keys
    job_id = (await plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python", "pool": "gpu"}]})).job_id
    wrong = (keys.partition(job_id) + 1) % PARTITIONS
    forged = {"job_id": job_id, "handoff_seq": 1, "graph": {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}}
    await redis.xadd(keys.data_stream("default", wrong), {"m": orjson.dumps(forged)})
    deadline = asyncio.get_running_loop().time() + 15
    while not (dead := await plane.bridge.dead_letters()):
        assert asyncio.get_running_loop().time() < deadline, "the forged message was never dead-lettered"
        await asyncio.sleep(0.05)

    assert "another partition" in dead[0]["reason"] and dead[0]["job"] == job_id
    assert (await plane.get_job(job_id)).status == "queued"  # still waiting for its own worker
    assert await plane.bridge.stream_length(keys.data_stream("default", wrong)) == 0


async def test_queue_metrics_sum_a_lanes_partitions(settings: Settings) -> None:
    plane = ControlPlane(settings)
    await plane.start()
    try:
        for _ in range(10):
            await plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python", "pool": "gpu"}]})
        lanes, _ = await plane.bridge.lane_streams()
        gpu = [lane for lane in lanes if plane.bridge.keys.pool_of_stream(lane.stream) == "gpu"]

        assert len(gpu) == PARTITIONS and sum(lane.length for lane in gpu) == 10
    finally:
        await plane.stop(grace_s=0.5)
