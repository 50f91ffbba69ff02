"""The WebSocket hub against a real uvicorn server, real WebSocket clients and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from dualplane.common.bridge import Bridge
from dualplane.common.job_state import Mutation
from dualplane.common.settings import Settings
from dualplane.common.wire import event_body
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.auth import Authenticator
from dualplane.control_plane.hub import Hub, add_websocket_route
from tests.helpers import RunningWorker, kill_pubsub_clients, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.both_topologies]

SECRET = "hub-test-secret-of-at-least-32-bytes"


# -- harness --------------------------------------------------------------------------


def _listen(sndbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:  # inherited by the accepted sockets (Linux)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serving(app: FastAPI, *, small_sndbuf_port: bool = False) -> AsyncIterator[list[str]]:
    """Serve ``app`` with uvicorn in this loop; yields the ws:// URLs of its listening sockets.
    With ``small_sndbuf_port`` a second socket has a tiny send buffer (for slow-client tests)."""
    socks = [_listen()] + ([_listen(4096)] if small_sndbuf_port else [])
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=0, ws="websockets-sansio", lifespan="off", log_level="warning",
        ws_per_message_deflate=False, timeout_graceful_shutdown=2,
    ))
    task = asyncio.create_task(server.serve(sockets=socks))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield [f"ws://127.0.0.1:{sock.getsockname()[1]}/ws" for sock in socks]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        for sock in socks:
            sock.close()


@contextlib.asynccontextmanager
async def hub_server(bridge: Bridge, authenticator: Authenticator, **hub_kwargs: Any) -> AsyncIterator[tuple[Hub, str]]:
    small_sndbuf_port = hub_kwargs.pop("small_sndbuf_port", False)
    hub = Hub(bridge, **hub_kwargs)
    await hub.start()
    app = FastAPI()
    add_websocket_route(app, hub, authenticator)
    try:
        async with serving(app, small_sndbuf_port=small_sndbuf_port) as urls:
            yield hub, (urls if small_sndbuf_port else urls[0])
    finally:
        await hub.stop()


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(algorithm="HS256", secret=SECRET)


@pytest.fixture
async def hub_url(control_plane: ControlPlane, authenticator: Authenticator) -> AsyncIterator[tuple[Hub, str]]:
    async with hub_server(control_plane.bridge, authenticator) as pair:
        yield pair


def sleep_graph(seconds: float = 0.4, steps: int = 8, nodes: int = 1) -> dict[str, Any]:
    return {"nodes": [{"id": f"s{i}", "task": "sleep", "plane": "python",
                       "params": {"seconds": seconds, "steps": steps}} for i in range(nodes)]}


async def submit(plane: ControlPlane, graph: dict[str, Any], user: str = "alice") -> str:
    return (await plane.submit(graph, user=user)).job_id


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def stream_seqs(bridge: Bridge, job_id: str) -> list[int]:
    return [orjson.loads(raw)["seq"] for raw in await bridge.raw_events(job_id)]


class Follower:
    """A WebSocket client that records, per job, the seqs of the updates it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seqs: dict[str, list[int]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.others: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str, **kwargs: Any) -> Follower:
        return cls(await connect(f"{url}?token={token}", compression=None, **kwargs))

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in self.ws:
                message = orjson.loads(text)
                kind = message["type"]
                if kind == "update":
                    assert message["seq"] == message["event"]["seq"]
                    self.seqs.setdefault(message["jobId"], []).append(message["seq"])
                    self.events.setdefault(message["jobId"], []).append(message["event"])
                elif kind == "snapshot":
                    self.snapshots[message["jobId"]] = message
                    self.seqs.setdefault(message["jobId"], [])
                else:
                    self.others.append(message)
                self.changed.set()

    async def send(self, **message: Any) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def subscribe(self, job_id: str, since: int | None = None) -> None:
        await self.send(type="subscribe", jobId=job_id, **({} if since is None else {"since": since}))

    def last(self, job_id: str) -> int:
        seqs = self.seqs.get(job_id) or []
        snapshot = self.snapshots.get(job_id)
        return seqs[-1] if seqs else (snapshot["seq"] if snapshot else -1)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self.changed.clear()
            if self._reader.done():
                raise AssertionError(f"connection closed: {self.ws.close_code} {self.ws.close_reason}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; got {self.seqs} {self.others}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def next_other(self, timeout_s: float = 5.0) -> dict[str, Any]:
        count = len(self.others)
        await self.wait_for(lambda: len(self.others) > count, timeout_s)
        return self.others[count]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def close_all(followers: list[Follower]) -> None:
    await asyncio.gather(*(f.close() for f in followers), return_exceptions=True)


# -- 1. fan-out: exactly once, in order, no gaps -----------------------------------------


async def test_200_subscribers_over_20_jobs_get_every_event_once_in_order(
    control_plane: ControlPlane, worker_factory: Callable[..., Awaitable[RunningWorker]],
    hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    hub, url = hub_url
    await worker_factory(concurrency=20)
    token = authenticator.mint("alice")
    job_ids = [await submit(control_plane, sleep_graph(seconds=2.0, steps=12, nodes=2)) for _ in range(20)]

    # 200 connections, 10 per job; every 4th also follows a second job (several per connection).
    followers = await asyncio.gather(*(Follower.open(url, token) for _ in range(200)))
    plan: list[list[str]] = []
    for i, _follower in enumerate(followers):
        jobs = [job_ids[i % 20]] + ([job_ids[(i + 7) % 20]] if i % 4 == 0 else [])
        plan.append(jobs)
    await asyncio.gather(*(f.subscribe(j, since=0) for f, jobs in zip(followers, plan) for j in jobs))

    for job_id in job_ids:
        assert (await wait_for_job(control_plane, job_id, timeout_s=30)).status == "succeeded"
    expected = {job_id: await stream_seqs(control_plane.bridge, job_id) for job_id in job_ids}
    assert all(len(seqs) >= 20 for seqs in expected.values())  # progress events included (4/s per node)
    for follower, jobs in zip(followers, plan):
        await follower.wait_for(lambda f=follower, js=jobs: all(f.last(j) == expected[j][-1] for j in js))
    for follower, jobs in zip(followers, plan):
        assert set(follower.seqs) == set(jobs)
        for job_id in jobs:
            assert follower.seqs[job_id] == expected[job_id]
            assert follower.events[job_id] == [orjson.loads(e) for e in await control_plane.bridge.raw_events(job_id)]
    assert hub.stats["slow_closed"] == 0
    await close_all(followers)
    await eventually(lambda: hub.connections == 0, what="hub connections to close")
    assert all(hub.subscribers(j) == 0 for j in job_ids)


async def test_live_updates_start_after_the_snapshot_seq(
    control_plane: ControlPlane, worker: RunningWorker, hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    _, url = hub_url
    job_id = await submit(control_plane, sleep_graph(seconds=0.5, steps=10))
    follower = await Follower.open(url, authenticator.mint("alice"))
    await follower.subscribe(job_id)  # no since: snapshot, then live only
    await wait_for_job(control_plane, job_id)
    expected = await stream_seqs(control_plane.bridge, job_id)
    await follower.wait_for(lambda: follower.last(job_id) == expected[-1])
    snapshot = follower.snapshots[job_id]
    assert snapshot["job"]["id"] == job_id and snapshot["seq"] == snapshot["job"]["seq"]
    assert follower.seqs[job_id] == expected[snapshot["seq"]:]
    await follower.close()


# -- 2. reconnect with since ---------------------------------------------------------


async def test_a_client_that_reconnects_with_since_ends_with_the_same_events(
    control_plane: ControlPlane, worker: RunningWorker, hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    _, url = hub_url
    token = authenticator.mint("alice")
    job_id = await submit(control_plane, sleep_graph(seconds=2.0, steps=20))
    stayer = await Follower.open(url, token)
    await stayer.subscribe(job_id, since=0)
    leaver = await Follower.open(url, token)
    await leaver.subscribe(job_id, since=0)

    await leaver.wait_for(lambda: leaver.last(job_id) >= 6)
    await leaver.close()
    first_part = leaver.seqs[job_id]
    await asyncio.sleep(0.6)  # events go by while it is away (progress is sent 4 times a second)
    back = await Follower.open(url, token)
    await back.subscribe(job_id, since=first_part[-1])

    await wait_for_job(control_plane, job_id)
    expected = await stream_seqs(control_plane.bridge, job_id)
    await stayer.wait_for(lambda: stayer.last(job_id) == expected[-1])
    await back.wait_for(lambda: back.last(job_id) == expected[-1])
    assert back.snapshots[job_id]["seq"] > first_part[-1]  # it really missed some
    assert stayer.seqs[job_id] == expected
    assert first_part + back.seqs[job_id] == expected
    await close_all([stayer, back])


# -- 3. slow clients ---------------------------------------------------------------


async def test_a_slow_client_is_closed_with_4008_without_delaying_the_others(
    control_plane: ControlPlane, authenticator: Authenticator,
):
    token = authenticator.mint("alice")
    job_id = await submit(control_plane, sleep_graph())  # no worker: it stays queued; we emit on it
    async with hub_server(control_plane.bridge, authenticator, buffer_messages=20,
                          small_sndbuf_port=True) as (hub, (url, slow_url)):
        fast = await Follower.open(url, token)
        await fast.subscribe(job_id)
        # The slow client reads its socket into a 1-frame queue nobody drains: it stops reading.
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", int(slow_url.rsplit(":", 1)[1].split("/")[0])))
        slow = await connect(f"{slow_url}?token={token}", sock=raw, compression=None, max_queue=1)
        await slow.send(orjson.dumps({"type": "subscribe", "jobId": job_id}).decode())
        await eventually(lambda: hub.subscribers(job_id) == 2, what="two subscribers")

        blob = "x" * 16000
        n_events = 300
        for i in range(n_events):  # ~4.8 MB: far more than the slow client's socket buffers
            await control_plane.bridge.emit(job_id, Mutation(events=[event_body("data", job_id,
                                                                                data={"i": i, "blob": blob})]))
        snapshot_seq = fast.snapshots[job_id]["seq"]
        # the fast client gets every event while the slow one has not read a byte yet: nothing
        # it does holds the others back (no wall-time bound: the timeout only ends a hang)
        await fast.wait_for(lambda: fast.last(job_id) == snapshot_seq + n_events, timeout_s=10)
        await eventually(lambda: hub.stats["slow_closed"] == 1, what="the slow client to be closed")

        assert fast.seqs[job_id] == list(range(snapshot_seq + 1, snapshot_seq + n_events + 1))
        assert hub.subscribers(job_id) == 1

        # Now the slow client reads what was buffered and finds the close frame at the end.
        received = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 10)
                received += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        assert closed.value.rcvd.reason == "client too slow: 20 messages buffered"
        assert received < n_events
        # The fast one is still served.
        await fast.send(type="ping")
        assert (await fast.next_other()) == {"type": "pong"}
        await fast.close()


# -- 4. auth -------------------------------------------------------------------------


async def expect_close(url: str, code: int, **kwargs: Any) -> str:
    async with connect(url, compression=None, **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    return closed.value.rcvd.reason


async def test_missing_invalid_or_expired_tokens_are_closed_with_4401(
    hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    _, url = hub_url
    assert (await expect_close(url, 4401)).startswith("missing token")
    assert (await expect_close(f"{url}?token=garbage", 4401)).startswith("invalid token")
    other = Authenticator(algorithm="HS256", secret="another-secret-of-at-least-32-bytes").mint("alice")
    assert (await expect_close(f"{url}?token={other}", 4401)).startswith("invalid token")
    expired = authenticator.mint("alice", ttl_s=-10)
    assert await expect_close(f"{url}?token={expired}", 4401) == "token expired"
    reason = await expect_close(url, 4401, additional_headers={"Authorization": "Basic abc"})
    assert "Bearer" in reason


async def test_users_see_only_their_jobs_admins_see_all(
    control_plane: ControlPlane, hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    _, url = hub_url
    alices = await submit(control_plane, sleep_graph(), user="alice")
    ownerless = (await control_plane.submit(sleep_graph())).job_id

    # The Authorization header works as well as ?token=.
    bob = Follower(await connect(url, compression=None,
                                 additional_headers={"Authorization": f"Bearer {authenticator.mint('bob')}"}))
    await bob.subscribe(alices)
    not_yours = await bob.next_other()
    await bob.subscribe("no-such-job-here")
    unknown = await bob.next_other()
    await bob.subscribe(ownerless)
    no_owner = await bob.next_other()
    assert not_yours == {"type": "error", "message": "no such job", "jobId": alices}
    assert unknown == {"type": "error", "message": "no such job", "jobId": "no-such-job-here"}
    assert no_owner == {"type": "error", "message": "no such job", "jobId": ownerless}
    assert bob.snapshots == {}

    alice = await Follower.open(url, authenticator.mint("alice"))
    await alice.subscribe(alices)
    await alice.wait_for(lambda: alices in alice.snapshots)

    admin = await Follower.open(url, authenticator.mint("root", role="admin"))
    for job_id in (alices, ownerless):
        await admin.subscribe(job_id)
    await admin.wait_for(lambda: {alices, ownerless} <= set(admin.snapshots))
    assert admin.snapshots[alices]["job"]["user"] == "alice"
    await close_all([bob, alice, admin])


# -- 5. replicas -------------------------------------------------------------------


async def test_two_hubs_on_the_same_redis_both_deliver_the_full_stream(
    control_plane: ControlPlane, worker: RunningWorker, settings: Settings, authenticator: Authenticator,
    hub_url: tuple[Hub, str],
):
    hub1, url1 = hub_url
    token = authenticator.mint("alice")
    async with Bridge(settings.bridge_config()) as replica_bridge, \
            hub_server(replica_bridge, authenticator) as (hub2, url2):
        jobs = [await submit(control_plane, sleep_graph(seconds=0.5, steps=10)) for _ in range(3)]
        followers = [await Follower.open(url, token) for url in (url1, url1, url2, url2)]
        for follower in followers:
            for job_id in jobs:
                await follower.subscribe(job_id, since=0)
        for job_id in jobs:
            await wait_for_job(control_plane, job_id)
        for job_id in jobs:
            expected = await stream_seqs(control_plane.bridge, job_id)
            for follower in followers:
                await follower.wait_for(lambda f=follower, j=job_id, e=expected: f.last(j) == e[-1])
                assert follower.seqs[job_id] == expected
        assert hub1.stats["delivered"] > 0 and hub2.stats["delivered"] > 0
        await close_all(followers)


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
async def test_on_a_cluster_a_hub_receives_the_events_of_the_jobs_it_follows_and_no_others(
    control_plane: ControlPlane, hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    hub, url = hub_url
    bridge = control_plane.bridge
    by_partition: dict[int, list[str]] = {}
    while not any(len(ids) >= 3 for ids in by_partition.values()):
        job_id = await submit(control_plane, sleep_graph())  # no worker: they stay queued
        by_partition.setdefault(bridge.keys.partition(job_id), []).append(job_id)
    # one partition: one slot, so one of the hub's links, which receives in the order published
    followed, other, later = next(ids for ids in by_partition.values() if len(ids) >= 3)[:3]

    async def emit(job_id: str, n: int) -> None:
        for i in range(n):
            await bridge.emit(job_id, Mutation(events=[event_body("progress", job_id, progress=i / 100)]))

    async def received_by_the_hub(watched: str, silent: str, silent_events: int, watched_events: int) -> int:
        """Follow ``watched``; emit on ``silent`` and then on ``watched``; once the follower has
        all of ``watched``'s, how many events the hub received meanwhile."""
        await follower.subscribe(watched, since=0)
        await follower.wait_for(lambda: watched in follower.snapshots)
        received = hub.stats["published"]
        await emit(silent, silent_events)
        await emit(watched, watched_events)
        seqs = await stream_seqs(bridge, watched)
        await follower.wait_for(lambda: follower.last(watched) == seqs[-1])
        return hub.stats["published"] - received

    follower = await Follower.open(url, authenticator.mint("alice"))
    assert await received_by_the_hub(followed, other, 5, 3) == 3  # none of the unfollowed job's five
    expected = await stream_seqs(bridge, followed)
    await follower.send(type="unsubscribe", jobId=followed)
    assert (await follower.next_other())["type"] == "unsubscribed"
    assert await received_by_the_hub(later, followed, 4, 2) == 2  # the job no client follows any more: none
    assert follower.seqs[followed] == expected
    await follower.close()


# -- the hub's own Redis connection -------------------------------------------------


async def test_the_hub_resubscribes_and_fills_the_gap_after_its_redis_connection_drops(
    control_plane: ControlPlane, hub_url: tuple[Hub, str], authenticator: Authenticator, redis,
):
    hub, url = hub_url
    job_id = await submit(control_plane, sleep_graph())
    follower = await Follower.open(url, authenticator.mint("alice"))
    await follower.subscribe(job_id, since=0)
    await follower.wait_for(lambda: job_id in follower.snapshots)

    async def emit(n: int) -> None:
        for i in range(n):
            await control_plane.bridge.emit(job_id,
                                            Mutation(events=[event_body("progress", job_id, progress=i / 100)]))

    await emit(5)
    killed = await kill_pubsub_clients(redis)
    assert killed >= 1
    await emit(5)  # published while the hub is away: only the stream has them
    await eventually(lambda: hub.stats["resubscribes"] >= 1, what="the hub to re-subscribe")
    await emit(5)
    expected = await stream_seqs(control_plane.bridge, job_id)
    await follower.wait_for(lambda: follower.last(job_id) == expected[-1])
    assert follower.seqs[job_id] == expected
    await follower.close()


# -- 6. protocol ---------------------------------------------------------------------


async def test_ping_pong_and_bad_messages_get_errors_without_closing(
    control_plane: ControlPlane, hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    _, url = hub_url
    client = await Follower.open(url, authenticator.mint("alice"))
    await client.send(type="ping")
    assert await client.next_other() == {"type": "pong"}
    await client.send(type="frobnicate")
    assert await client.next_other() == {"type": "error", "message": "unknown message type 'frobnicate'"}
    await client.ws.send("{not json")
    assert await client.next_other() == {"type": "error", "message": "invalid JSON"}
    await client.send(type="subscribe")
    assert await client.next_other() == {"type": "error", "message": "subscribe needs a jobId"}
    job_id = await submit(control_plane, sleep_graph())
    await client.send(type="subscribe", jobId=job_id, since=-1)
    assert (await client.next_other())["message"] == "since must be an integer from 0 to 2^53"

    await client.subscribe(job_id)
    await client.wait_for(lambda: job_id in client.snapshots)
    await client.send(type="unsubscribe", jobId=job_id)
    assert await client.next_other() == {"type": "unsubscribed", "jobId": job_id}
    await control_plane.bridge.emit(job_id, Mutation(events=[event_body("progress", job_id, progress=0.5)]))
    await client.send(type="ping")
    assert await client.next_other() == {"type": "pong"}
    assert client.seqs[job_id] == []  # nothing after the unsubscribe
    assert client.ws.close_code is None
    await client.close()


# -- 7. token expiry and re-authentication (the real app) ------------------------------


@pytest.fixture
async def app_url(control_plane: ControlPlane, settings: Settings, authenticator: Authenticator
                  ) -> AsyncIterator[str]:
    """The whole control-plane app (create_app) served by uvicorn in this loop; its hub is
    started here because the test server runs without lifespan."""
    from dualplane.control_plane import create_app

    app = create_app(settings, plane=control_plane, authenticator=authenticator)
    await app.state.hub.start()
    try:
        async with serving(app) as urls:
            yield urls[0]
    finally:
        await app.state.hub.stop()


async def closed_with(follower: Follower, timeout_s: float = 10.0) -> tuple[int | None, str | None]:
    """Wait until the server closes the connection; its close code and reason."""
    await asyncio.wait_for(asyncio.gather(follower._reader, return_exceptions=True), timeout_s)
    return follower.ws.close_code, follower.ws.close_reason


async def test_a_connection_is_closed_with_4401_when_its_token_expires(
    control_plane: ControlPlane, app_url: str, authenticator: Authenticator,
):
    job_id = await submit(control_plane, sleep_graph())
    follower = await Follower.open(app_url, authenticator.mint("alice", ttl_s=2))
    await follower.subscribe(job_id)
    await follower.wait_for(lambda: job_id in follower.snapshots)
    assert await closed_with(follower) == (4401, "token expired")


async def test_auth_with_a_fresh_token_keeps_the_connection_past_the_first_expiry(
    control_plane: ControlPlane, app_url: str, authenticator: Authenticator,
):
    job_id = await submit(control_plane, sleep_graph())
    follower = await Follower.open(app_url, authenticator.mint("alice", ttl_s=2))
    await follower.subscribe(job_id)
    await follower.wait_for(lambda: job_id in follower.snapshots)
    fresh = authenticator.mint("alice", ttl_s=60)
    await follower.send(type="auth", token=fresh)
    authenticated = await follower.next_other()
    assert authenticated["type"] == "authenticated" and authenticated["exp"] > time.time() + 50
    await asyncio.sleep(3)  # past the first token's exp
    await follower.send(type="ping")
    assert await follower.next_other() == {"type": "pong"}
    await control_plane.bridge.emit(job_id, Mutation(events=[event_body("progress", job_id, progress=0.5)]))
    await follower.wait_for(lambda: len(follower.seqs[job_id]) == 1)  # still subscribed
    await follower.close()


@pytest.mark.parametrize("other", ["another user", "another role", "an invalid token"])
async def test_auth_with_another_principal_closes_the_connection(
    other: str, app_url: str, authenticator: Authenticator,
):
    token = {"another user": lambda: authenticator.mint("mallory"),
             "another role": lambda: authenticator.mint("alice", role="admin"),
             "an invalid token": lambda: "not.a.jwt"}[other]()
    follower = await Follower.open(app_url, authenticator.mint("alice"))
    await follower.send(type="auth", token=token)
    code, reason = await closed_with(follower)
    assert code == 4401
    assert reason == "auth must keep the same user and role" if other != "an invalid token" \
        else reason.startswith("invalid token")


async def test_auth_messages_without_a_token_are_errors(app_url: str, authenticator: Authenticator):
    follower = await Follower.open(app_url, authenticator.mint("alice"))
    await follower.send(type="auth")
    assert await follower.next_other() == {"type": "error", "message": "auth needs a token"}
    await follower.send(type="auth", token=["x"])
    assert await follower.next_other() == {"type": "error", "message": "auth needs a token"}
    assert follower.ws.close_code is None
    await follower.close()


async def test_since_past_2_to_the_53_is_an_error(
    control_plane: ControlPlane, hub_url: tuple[Hub, str], authenticator: Authenticator,
):
    _, url = hub_url
    job_id = await submit(control_plane, sleep_graph())
    client = await Follower.open(url, authenticator.mint("alice"))
    for since in (2**53 + 1, 2**64 - 1, 2**64, 10**30, True, 1.5, "3"):
        await client.ws.send(json.dumps({"type": "subscribe", "jobId": job_id, "since": since}))
        reply = await client.next_other()
        assert reply["type"] == "error" and reply["message"].startswith("since must be"), (since, reply)
    assert client.snapshots == {}
    await client.send(type="subscribe", jobId=job_id, since=2**53)
    await client.wait_for(lambda: job_id in client.snapshots)
    await client.close()
