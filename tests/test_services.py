"""The embedded servers start, answer, enforce credentials and stop without leftovers."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
from minio import Minio
from minio.error import S3Error

from dualplane.devstack.services import S3Server, free_port, free_port_pair, start_redis, start_s3
from tests.helpers import descendants, pid_alive


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_free_ports_are_bindable() -> None:
    assert _bindable(free_port())
    base = free_port_pair(10000)
    assert _bindable(base) and _bindable(base + 10000)


def test_redis_answers_and_stops_leaving_no_process(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    pid = server.process.pid
    with redis_sync.Redis.from_url(server.url) as client:
        assert client.ping()
        client.set("k", b"v")
        assert client.get("k") == b"v"
    children = descendants(pid)
    server.stop()
    server.stop()  # idempotent
    assert server.process.returncode is not None
    assert not pid_alive(pid)
    assert not any(pid_alive(child) for child in children)


async def test_session_redis_fixture_is_clean(redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set(b"key", b"value")
    assert await redis.get(b"key") == b"value"


def test_start_redis_names_make_deps_when_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make deps"):
        start_redis(tmp_path, binary="definitely-not-redis-server")


def _minio(server: S3Server, secret_key: str) -> Minio:
    return Minio(
        server.endpoint, access_key=server.access_key, secret_key=secret_key, secure=False,
        region="us-east-1",
    )  # fmt: skip


def test_s3_rejects_wrong_secret(s3_server: S3Server) -> None:
    _minio(s3_server, s3_server.secret_key).list_buckets()  # the real credentials work
    with pytest.raises(S3Error):
        _minio(s3_server, s3_server.secret_key + "x").list_buckets()


def test_s3_refuses_anonymous_requests(s3_server: S3Server) -> None:
    good = _minio(s3_server, s3_server.secret_key)
    if not good.bucket_exists("anon-check"):
        good.make_bucket("anon-check")
    assert httpx.get(s3_server.url + "/").status_code == 403
    assert httpx.get(s3_server.url + "/anon-check/").status_code == 403
    assert httpx.put(s3_server.url + "/anon-check/x", content=b"x").status_code == 403


@pytest.mark.slow
def test_s3_stops_leaving_no_process(tmp_path: Path) -> None:
    server = start_s3(tmp_path / "s3")
    pid = server.process.pid
    assert httpx.get(server.url + "/").status_code == 403
    children = descendants(pid)
    server.stop()
    server.stop()  # idempotent
    assert server.process.returncode is not None
    assert not pid_alive(pid)
    assert not any(pid_alive(child) for child in children)
    assert not _listening(server.port)
    assert not any(path.exists() for path in server.stray_sockets)  # weed's /tmp gRPC sockets


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
