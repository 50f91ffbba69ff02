"""Shared fixtures: one real Redis and one real S3 (SeaweedFS) per test session."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.data_plane import Worker
from dualplane.devstack.services import (
    RedisClusterServer,
    RedisServer,
    S3Server,
    start_redis,
    start_redis_cluster,
    start_s3,
)
from tests.helpers import RunningWorker, unique_name


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster (3 primaries, 1 replica each), started on first use only."""
    with start_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
async def redis_cluster_client(redis_cluster: RedisClusterServer) -> AsyncIterator[aioredis.RedisCluster]:
    """A bytes cluster client on a healthy, empty cluster. A node an earlier test killed (and,
    failing, never restarted) is started again first, so one failure does not cascade."""
    for node in redis_cluster.nodes:
        if not redis_cluster.is_alive(node):
            redis_cluster.restart(node)
    redis_cluster.wait_healthy()
    redis_cluster.flushall()
    client = aioredis.RedisCluster.from_url(redis_cluster.url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


#: Every test writes to a bucket of its own, and weed gives each bucket a volume: its automatic
#: limit (free disk / 1 GiB, 30-70 here) ran out late in the suite, failing every write after.
S3_VOLUMES = 2000


def pytest_configure(config: pytest.Config) -> None:
    # a run started in the background of a shell without job control (`make test &`) inherits
    # SIGINT ignored, and every process it starts would too (Python keeps an inherited SIG_IGN):
    # the tests that press Ctrl-C on `dualplane up` need it delivered, as in a terminal
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_s3(tmp_path_factory.mktemp("s3"), volumes=S3_VOLUMES) as server:
        yield server


#: The topologies a suite marked ``both_topologies`` runs on (unless a test parametrizes
#: ``topology`` itself, e.g. to run on the cluster only): one Redis, and a Redis Cluster of
#: 3 primaries with a replica each, keyed into CLUSTER_PARTITIONS partitions (two per primary),
#: every batch of writes WAITing for its replica.
TOPOLOGIES = ("single", "cluster")
CLUSTER_PARTITIONS = 6


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    chosen = any("topology" in marker.args[0] for marker in definition.iter_markers("parametrize"))
    if ("topology" in metafunc.fixturenames and definition.get_closest_marker("both_topologies")
            and not definition.get_closest_marker("single_redis_only") and not chosen):
        metafunc.parametrize("topology", TOPOLOGIES, indirect=True)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """``single`` unless the test is marked ``both_topologies`` (then each in turn)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
async def redis(request: pytest.FixtureRequest, topology: str) -> AsyncIterator[Any]:
    """A bytes client on an empty database; each test starts from FLUSHALL. On the cluster
    topology a RedisCluster client, on a healthy cluster (a node an earlier test killed is
    started again first)."""
    client: Any
    if topology == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        for node in cluster.nodes:
            if not cluster.is_alive(node):
                cluster.restart(node)
        cluster.wait_healthy()
        cluster.flushall()
        client = aioredis.RedisCluster.from_url(cluster.url, decode_responses=False)
        await client.initialize()  # the slot map, before a test's first Pub/Sub call needs it
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis.from_url(server.url, decode_responses=False)
        await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def artifact_store(s3_server: S3Server) -> ArtifactStore:
    """A store on a fresh bucket, so tests never see each other's objects."""
    store = ArtifactStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=unique_name("art"),
    )
    await store.ensure_bucket()
    return store


# -- planes ------------------------------------------------------------------------------

#: Short leases so reclaim tests take seconds, not minutes.
TEST_LEASE_S = 1.0
TEST_JWT_SECRET = "test-secret-for-hs256-at-least-32-bytes"


@pytest.fixture
def settings(request: pytest.FixtureRequest, topology: str, s3_server: S3Server, redis: Any) -> Settings:
    """Settings pointing at the session servers (the ``redis`` fixture flushed the db)."""
    if topology == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        topology_settings: dict[str, Any] = {"redis_url": cluster.url, "redis_cluster": True,
                                             "redis_partitions": CLUSTER_PARTITIONS, "redis_wait_replicas": 1}
    else:
        topology_settings = {"redis_url": request.getfixturevalue("redis_server").url}
    return Settings(
        **topology_settings,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=unique_name("jobs"),
        lease_s=TEST_LEASE_S,
        read_block_ms=100,
        shutdown_grace_s=2.0,
        concurrency=8,
        jwt_secret=TEST_JWT_SECRET,
    )


@pytest.fixture
async def control_plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    plane = ControlPlane(settings)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(grace_s=0.5)


@pytest.fixture
async def worker_factory(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    """Start in-process workers: ``await worker_factory(concurrency=2)``; all stop at teardown."""
    started: list[RunningWorker] = []

    async def start(**overrides: Any) -> RunningWorker:
        worker_settings = settings.model_copy(update={"worker_id": unique_name("w"), **overrides})
        running = RunningWorker(Worker(worker_settings))
        await running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def worker(worker_factory: Callable[..., Awaitable[RunningWorker]]) -> RunningWorker:
    return await worker_factory()


@pytest.fixture
def authenticator(settings: Settings) -> Authenticator:
    return Authenticator.from_settings(settings.auth)


@pytest.fixture
async def api(settings: Settings, control_plane: ControlPlane, authenticator: Authenticator
              ) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """HTTP clients of the real app (in-process ASGI) on the running control plane:
    ``api("alice")`` is alice with role user, ``api("root", role="admin")`` an admin."""
    app = create_app(settings, plane=control_plane, authenticator=authenticator)
    clients: list[httpx.AsyncClient] = []
    lifespan = app.router.lifespan_context(app)  # starts the hub (the plane is already running)
    await lifespan.__aenter__()

    def make(user: str | None = "alice", role: str = "user", token: str | None = None) -> httpx.AsyncClient:
        headers = {}
        if token is None and user is not None:
            token = authenticator.mint(user, role)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp", headers=headers)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    await lifespan.__aexit__(None, None, None)


# -- ML: tiny models (issue 4; tests marked `ml`) -----------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny random-weight models of the real classes (MusicGen, SD 1.5, motion adapter,
    SpeechT5 + HiFi-GAN), built once per session into a tmp dir: name → directory."""
    pytest.importorskip("torch")
    from dualplane.ml.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
async def upload_models(settings: Settings, tiny_models: dict[str, Any]
                        ) -> Callable[..., Awaitable[ArtifactStore]]:
    """Upload tiny models under ``models/<name>/`` of this test's bucket, where the packaged
    registry sends workers: ``store = await upload_models("sd15", "animatediff-motion-adapter")``."""
    from dualplane.common.artifacts import store_from_settings
    from dualplane.ml.model_store import upload_model_dir

    store = store_from_settings(settings.store)
    assert store is not None

    async def upload(*names: str) -> ArtifactStore:
        await store.ensure_bucket()
        for name in names:
            await upload_model_dir(store, name, tiny_models[name])
        return store

    return upload


@pytest.fixture
async def uploaded_models(request: pytest.FixtureRequest,
                          upload_models: Callable[..., Awaitable[ArtifactStore]]) -> ArtifactStore:
    """The tiny MusicGen uploaded under ``models/musicgen-small/`` of this test's bucket (each
    test has its own bucket, so this runs per test: six small files). Other models: parametrize
    indirectly, ``@pytest.mark.parametrize("uploaded_models", [("sd15", ...)], indirect=True)``,
    or call :func:`upload_models`."""
    names = getattr(request, "param", None) or ("musicgen-small",)
    return await upload_models(*([names] if isinstance(names, str) else names))
