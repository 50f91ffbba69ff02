"""A dead consumer's messages are taken over before new work, even while the pool is busy."""

from __future__ import annotations

import pytest

from dualplane.control_plane import ControlPlane
from tests.helpers import wait_for_job

pytestmark = pytest.mark.both_topologies

NEW_JOBS = 24
SLEEP = {"nodes": [{"id": "s", "task": "sleep", "plane": "python", "params": {"seconds": 0.25, "steps": 1}}]}


async def test_abandoned_work_goes_before_new_work_in_a_saturated_pool(control_plane: ControlPlane,
                                                                      worker_factory, redis):
    stream = control_plane.bridge.keys.data_stream("default")
    await control_plane.bridge.ensure_group(stream)
    abandoned = (await control_plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})).job_id
    await redis.xreadgroup("workers", "died-holding-it", {stream: ">"}, count=1)  # and never came back
    fresh = [(await control_plane.submit(SLEEP)).job_id for _ in range(NEW_JOBS)]
    await worker_factory(concurrency=1)  # one slot: a free one is there only between two jobs
    jobs = [await wait_for_job(control_plane, job_id, timeout_s=30) for job_id in [abandoned, *fresh]]

    order = [job.id for job in sorted(jobs, key=lambda job: job.finished_at)]
    # reclaimable one lease (1 s, four jobs' time) after it was taken; a reclaim is due every
    # half lease, and the next free slot goes to it: well before the queue of new work drains
    assert order.index(abandoned) < NEW_JOBS // 2, order.index(abandoned)
    assert all(job.status == "succeeded" for job in jobs)
