"""A primary of the Redis Cluster dies mid-flow: its replica takes over, both planes and the hub
find the new owner of its slots, and every job whose submission was accepted finishes, with no
node that succeeded run a second time.

What makes that hold (common/bridge/cluster.py): every batch of writes waits for the shard's
replica (``WAIT 1``, the test's settings) before its callers go on, so the promoted replica has
every accepted job, every claim's fence and every recorded success. Writes that were in flight
when the primary died failed for their callers, who left the messages pending: they are
reclaimed after the lease, and the fences turn away anything stale."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from redis.crc import key_slot

from dualplane.common.errors import BridgeError
from dualplane.control_plane import ControlPlane
from dualplane.devstack.services import RedisClusterServer
from tests.helpers import RunningWorker, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THREE_NODES = {"nodes": [
    {"id": "plan", "task": "emit", "plane": "control", "params": {"value": {"n": 1}}},
    {"id": "work", "task": "sleep", "plane": "python", "needs": ["plan"], "params": {"seconds": 0.3, "steps": 3}},
    {"id": "end", "task": "collect", "plane": "control", "needs": ["work"]},
]}


def _owner_or_none(cluster: RedisClusterServer, slot: int) -> object:
    """The primary serving ``slot`` now, None while no live node says (mid-failover)."""
    try:
        return cluster.primary_for_slot(slot)
    except (LookupError, RuntimeError):
        return None


async def _submit_for(plane: ControlPlane, seconds: float) -> tuple[list[str], int]:
    """Submit a job every 20 ms for ``seconds``: the ids accepted, and how many were refused
    (Redis unavailable for that job's shard; a client would retry them)."""
    accepted: list[str] = []
    refused = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            accepted.append((await plane.submit(THREE_NODES)).job_id)
        except BridgeError:
            refused += 1
        await asyncio.sleep(0.02)
    return accepted, refused


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
async def test_every_accepted_job_finishes_when_a_primary_dies_mid_flow(
        control_plane: ControlPlane, worker: RunningWorker, redis_cluster: RedisClusterServer, topology: str):
    keys = control_plane.bridge.keys
    slot = key_slot(keys.tags[0][1:-1].encode())  # partition 0's
    # the cluster helpers block (sync clients): off the loop the planes run on
    victim = await asyncio.to_thread(redis_cluster.primary_for_slot, slot)
    submitting = asyncio.create_task(_submit_for(control_plane, 14.0))
    await asyncio.sleep(3.0)  # jobs in every state on every shard
    await asyncio.to_thread(redis_cluster.kill, victim)
    deadline = time.monotonic() + 60
    while (owner := await asyncio.to_thread(_owner_or_none, redis_cluster, slot)) in (None, victim):
        assert time.monotonic() < deadline, f"no replica took over:\n{redis_cluster.log_tails()}"
        await asyncio.sleep(0.2)
    await asyncio.to_thread(redis_cluster.restart, victim)  # back as the new primary's replica: WAIT has one again
    accepted, refused = await submitting
    jobs = [await wait_for_job(control_plane, job_id, timeout_s=90) for job_id in accepted]
    succeeded_runs = Counter()
    for job in jobs:
        for event in await control_plane.bridge.events(job.id):
            if event.node_id is not None and event.status == "succeeded":
                succeeded_runs[(job.id, event.node_id)] += 1
    on_victim = [j for j in accepted if keys.partition(j) == 0]

    assert owner is not victim  # the replica serves the slots now
    assert len(accepted) > 100 and on_victim, (len(accepted), refused)
    assert Counter(job.status for job in jobs) == Counter({"succeeded": len(accepted)})
    assert set(succeeded_runs.values()) == {1} and len(succeeded_runs) == 3 * len(accepted)
