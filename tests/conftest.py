"""Shared fixtures: one real Redis and one real S3 (SeaweedFS) per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.services import RedisServer, S3Server, start_redis, start_s3
from tests.helpers import unique_name


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A bytes client on an empty database; each test starts from FLUSHALL."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=False)
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
