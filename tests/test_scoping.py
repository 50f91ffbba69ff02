"""Names a graph may use are scoped: pools must exist, and a client-chosen job id is the
user's own (two users' ids never collide, and one cannot probe for another's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from dualplane.control_plane import ControlPlane

RENDER = {"id": "render-1", "nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": 1}}]}


async def test_a_graph_may_not_create_pools_at_will(api, control_plane: ControlPlane, redis):
    alice = api("alice")
    made_up = await alice.post("/jobs", json={"nodes": [
        {"id": "a", "task": "noop", "plane": "python", "pool": "made-up-pool-1"}]})
    configured = await alice.post("/jobs", json={"nodes": [{"id": "a", "task": "noop", "plane": "python",
                                                            "pool": "gpu"}]})

    assert made_up.status_code == 422
    (error,) = made_up.json()["node_errors"]["a"]
    assert error["field"] == "pool" and "unknown pool 'made-up-pool-1'" in error["message"]
    assert not await redis.exists(control_plane.bridge.keys.data_stream("made-up-pool-1"))
    assert configured.status_code == 201


async def test_pools_from_settings_and_from_live_workers_are_accepted(settings, worker_factory):
    plane = ControlPlane(settings.model_copy(update={"pools": ["h100"]}), metrics_registry=CollectorRegistry())
    await plane.start()
    try:
        await worker_factory(pool="a10")
        for pool in ("h100", "a10"):
            await plane.submit({"nodes": [{"id": "a", "task": "noop", "plane": "python", "pool": pool}]})
    finally:
        await plane.stop(0.5)


async def test_two_users_may_choose_the_same_job_id_and_neither_sees_the_others(api):
    alice, bob = api("alice"), api("bob")
    first = await alice.post("/jobs", json=RENDER)
    second = await bob.post("/jobs", json=RENDER)
    again = await alice.post("/jobs", json=RENDER)

    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["graph"]["id"] == second.json()["graph"]["id"] == "render-1"
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert (await bob.get(f"/jobs/{first.json()['id']}")).status_code == 404
    changed = await alice.post("/jobs", json={**RENDER, "nodes": [{"id": "b", "task": "noop", "plane": "python"}]})
    assert changed.status_code == 409 and "different graph" in changed.json()["detail"]
