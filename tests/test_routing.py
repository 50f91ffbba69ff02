"""Routing nodes with `requires` to pools by the live workers' capability manifests."""

from __future__ import annotations

import asyncio
import time

from dualplane.common.models import CapabilityManifest, Node
from dualplane.common.routing import route_node
from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job


def manifest(pool: str, **extra) -> CapabilityManifest:
    return CapabilityManifest.model_validate({"worker_id": f"w-{pool}", "plane": "python", "pool": pool,
                                              "tasks": ["noop", "generate_music"], **extra})


def test_a_node_goes_to_the_pool_that_holds_its_model_warm_then_to_free_capacity():
    workers = [manifest("a", concurrency=8), manifest("b", concurrency=2, loaded_models=["musicgen-small"])]
    warm = Node(id="m", task="generate_music", plane="python", requires={"model": "musicgen-small"})
    assert route_node(warm, workers) is None and warm.pool == "b"
    roomy = Node(id="n", task="noop", plane="python", requires={})
    assert route_node(roomy, workers) is None and roomy.pool == "a"


def test_gpu_and_vram_needs_are_checked():
    workers = [manifest("cpu"), manifest("small-gpu", device="cuda:0", vram_total_mb=8 * 1024),
               manifest("big-gpu", device="cuda:0", vram_total_mb=80 * 1024)]
    big = Node(id="v", task="generate_music", plane="python", requires={"gpu": True, "min_vram_gb": 40})
    assert route_node(big, workers) is None and big.pool == "big-gpu"
    huge = Node(id="h", task="generate_music", plane="python", requires={"gpu": True, "min_vram_gb": 100})
    assert "100" in route_node(huge, workers)


async def _live_workers(plane: ControlPlane, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(await plane.bridge.live_workers()) < count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_a_node_with_requirements_is_routed_to_a_capable_pool(control_plane: ControlPlane, worker_factory):
    await worker_factory(pool="fast")
    await _live_workers(control_plane, 1)
    graph = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "requires": {"gpu": False}}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)
    assert job.status == "succeeded" and node(job, "a").pool == "fast"


async def test_a_node_no_live_worker_can_run_is_reported_not_left_silent(control_plane: ControlPlane,
                                                                         worker_factory):
    await worker_factory()
    await _live_workers(control_plane, 1)
    graph = {"nodes": [{"id": "g", "task": "noop", "plane": "python", "requires": {"gpu": True}}]}
    job_id = (await control_plane.submit(graph)).job_id
    events = await control_plane.bridge.events(job_id)
    reports = [e for e in events if e.data and "unroutable" in e.data]
    assert reports and reports[0].node_id == "g" and "GPU" in reports[0].message
    assert "waiting in pool 'gpu'" in reports[0].message
    await asyncio.sleep(0.5)  # the CPU worker in the default pool must not take it
    job = await control_plane.get_job(job_id)
    assert job.status == "queued" and node(job, "g").pool == "gpu" and node(job, "g").attempts == 0
    assert await control_plane.bridge.stream_length(control_plane.bridge.keys.data_stream("gpu")) == 1


async def test_a_worker_refuses_a_node_whose_requirements_it_cannot_meet(control_plane: ControlPlane,
                                                                        worker_factory):
    await worker_factory(pool="cpu-only")
    graph = {"nodes": [{"id": "g", "task": "noop", "plane": "python", "pool": "cpu-only",
                        "requires": {"gpu": True}}]}  # sent to a CPU pool by hand
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id)
    assert job.status == "failed"
    assert node(job, "g").error.type == "RequirementsNotMet" and "cpu" in node(job, "g").error.message
