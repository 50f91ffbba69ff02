"""The hub's frames on the wire: built once per event and written in batches per connection
(straight to uvicorn's transport), or sent one by one through ASGI where an extension is
negotiated. Real uvicorn, real WebSocket clients, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect

from dualplane.common.job_state import Mutation
from dualplane.common.wire import event_body
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.auth import Authenticator
from dualplane.control_plane.hub import Hub, add_websocket_route
from tests.test_hub import SECRET, Follower, eventually, hub_server, sleep_graph, stream_seqs, submit

pytestmark = pytest.mark.integration

# One size per length encoding of a frame header: 7-bit, 16-bit and 64-bit.
BLOB_SIZES = (0, 300, 70_000)


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(algorithm="HS256", secret=SECRET)


async def emit_burst(plane: ControlPlane, job_id: str, n_events: int) -> None:
    """Emit concurrently, so many events reach the hub in one Redis read (one batch)."""
    await asyncio.gather(*(plane.bridge.emit(job_id, Mutation(events=[event_body(
        "data", job_id, data={"i": i, "blob": "é" * BLOB_SIZES[i % len(BLOB_SIZES)]})]))
        for i in range(n_events)))


async def expect_every_event(plane: ControlPlane, followers: list[Follower], job_id: str) -> None:
    expected = await stream_seqs(plane.bridge, job_id)
    events = [orjson.loads(raw) for raw in await plane.bridge.raw_events(job_id)]
    for follower in followers:
        await follower.wait_for(lambda: follower.last(job_id) == expected[-1])  # noqa: B023 - awaited here
        snapshot_seq = follower.snapshots[job_id]["seq"]
        assert follower.seqs[job_id] == expected[snapshot_seq:]
        assert follower.events[job_id] == events[snapshot_seq:]


async def test_a_burst_of_small_and_large_events_arrives_whole_and_in_order_on_every_connection(
    control_plane: ControlPlane, authenticator: Authenticator,
):
    token = authenticator.mint("alice")
    job_id = await submit(control_plane, sleep_graph())  # no worker: it stays queued; we emit on it
    async with hub_server(control_plane.bridge, authenticator) as (hub, url):
        followers = [await Follower.open(url, token, max_size=None) for _ in range(5)]
        for follower in followers:
            await follower.subscribe(job_id)
        for follower in followers:
            await follower.wait_for(lambda: job_id in follower.snapshots)  # noqa: B023 - awaited here
        await emit_burst(control_plane, job_id, 120)
        await expect_every_event(control_plane, followers, job_id)
        # requests answered between the updates come through the same queue
        await followers[0].send(type="ping")
        assert (await followers[0].next_other()) == {"type": "pong"}
        assert hub.stats["slow_closed"] == 0
        for follower in followers:
            await follower.close()


@contextlib.asynccontextmanager
async def deflate_hub(plane: ControlPlane, authenticator: Authenticator) -> AsyncIterator[str]:
    """A hub served with per-message deflate on: frames cannot go out as built."""
    hub = Hub(plane.bridge)
    await hub.start()
    app = FastAPI()
    add_websocket_route(app, hub, authenticator)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", lifespan="off", log_level="warning",
                                           ws_per_message_deflate=True, timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()
        await hub.stop()


async def test_a_connection_with_per_message_deflate_gets_every_event_in_order(
    control_plane: ControlPlane, authenticator: Authenticator,
):
    token = authenticator.mint("alice")
    job_id = await submit(control_plane, sleep_graph())
    async with deflate_hub(control_plane, authenticator) as url:
        follower = Follower(await connect(f"{url}?token={token}", compression="deflate", max_size=None))
        await follower.subscribe(job_id)
        await follower.wait_for(lambda: job_id in follower.snapshots)
        assert follower.ws.protocol.extensions  # deflate was negotiated
        await emit_burst(control_plane, job_id, 60)
        await expect_every_event(control_plane, [follower], job_id)
        await follower.close()


async def test_a_client_that_drops_mid_burst_leaves_the_others_served_and_is_forgotten(
    control_plane: ControlPlane, authenticator: Authenticator,
):
    token = authenticator.mint("alice")
    job_id = await submit(control_plane, sleep_graph())
    async with hub_server(control_plane.bridge, authenticator) as (hub, url):
        stayers = [await Follower.open(url, token, max_size=None) for _ in range(3)]
        leaver = await Follower.open(url, token, max_size=None)
        for follower in [*stayers, leaver]:
            await follower.subscribe(job_id)
            await follower.wait_for(lambda: job_id in follower.snapshots)  # noqa: B023 - awaited here
        burst = asyncio.create_task(emit_burst(control_plane, job_id, 120))
        await leaver.wait_for(lambda: len(leaver.seqs[job_id]) > 0)
        leaver.ws.transport.abort()  # gone without a close frame, while frames are still queued
        await burst
        await expect_every_event(control_plane, stayers, job_id)
        await eventually(lambda: hub.connections == 3, what="the dropped connection to be forgotten")
        assert hub.subscribers(job_id) == 3
        for follower in stayers:
            await follower.close()
