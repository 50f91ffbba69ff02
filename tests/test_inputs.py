"""Task inputs by object key or URL: fetched together, in order, with errors that name them; URLs
only to destinations the policy allows (no loopback, private or metadata address by default,
on any redirect hop)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from dualplane.common import inputs
from dualplane.common.artifacts import ArtifactStore
from dualplane.common.context import TaskContext
from dualplane.common.errors import TransientError
from dualplane.common.inputs import fetch_inputs
from dualplane.common.registry import task
from dualplane.common.settings import Settings
from dualplane.devstack.services import S3Server, free_port
from dualplane.tasks import default_registry
from tests.helpers import node, planes_with, wait_for_job


class _Handler(http.server.BaseHTTPRequestHandler):
    """/ok/<n> answers n bytes; /status/<code> answers that status; /to/<url> redirects there
    (302); /slow/<n> sends n bytes, one every 0.1 s."""

    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        kind, _, arg = self.path.strip("/").partition("/")
        arg = arg if kind == "to" else arg.split("?", 1)[0]
        if kind == "ok":
            body = b"x" * int(arg)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "to":
            self.send_response(302)
            self.send_header("Location", arg)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "slow":
            self.send_response(200)
            self.send_header("Content-Length", arg)
            self.end_headers()
            try:
                for _ in range(int(arg)):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up
                pass
        else:
            self.send_response(int(arg))
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    """Records every connection it accepts and every request it reads."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.requests: list[str] = []

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


@dataclass
class Web:
    server: _Server = field(repr=False)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    @property
    def reached(self) -> bool:
        return self.server.connections > 0


def _serve() -> Iterator[Web]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Web(server)
    server.shutdown()
    server.server_close()


@pytest.fixture
def web() -> Iterator[Web]:
    yield from _serve()


@pytest.fixture
def other_web() -> Iterator[Web]:
    """A second server on another loopback port: a redirect target that is not allow-listed."""
    yield from _serve()


async def test_keys_and_urls_come_back_in_the_order_given(artifact_store: ArtifactStore, s3_server: S3Server,
                                                          web: Web):
    first = (await artifact_store.put("j", "n", "a.bin", b"first", "application/octet-stream"))["key"]
    second = (await artifact_store.put("j", "n", "b.bin", b"second", "application/octet-stream"))["key"]
    refs = [second, f"{web.url}/ok/3", first, await artifact_store.presigned_url(first)]
    policy = inputs.UrlPolicy([web.host_port, s3_server.endpoint])

    blobs = await fetch_inputs(refs, artifact_store.get, max_bytes=100, what="clip", policy=policy)

    assert blobs == [b"second", b"xxx", b"first", b"first"]


@pytest.mark.parametrize(("path", "error", "message"), [
    ("status/404", ValueError, "clip 1 (http://HOST/status/404): HTTP 404"),
    ("status/503", TransientError, "clip 1 (http://HOST/status/503): HTTP 503"),
    ("status/429", TransientError, "HTTP 429"),
    ("ok/101?token=secret", ValueError, "is larger than 100 bytes"),
])
async def test_bad_urls_fail_naming_the_input_and_saying_whether_to_retry(
    artifact_store: ArtifactStore, web: Web, path: str, error: type[Exception], message: str
):
    key = (await artifact_store.put("j", "n", "a.bin", b"ok", "application/octet-stream"))["key"]

    with pytest.raises(error) as raised:
        await fetch_inputs([key, f"{web.url}/{path}"], artifact_store.get, max_bytes=100, what="clip",
                           policy=inputs.UrlPolicy([web.host_port]))

    assert message.replace("HOST", web.host_port) in str(raised.value)
    assert "secret" not in str(raised.value)  # a URL's query may carry a token


async def test_an_unreachable_url_is_transient():
    with pytest.raises(TransientError, match="image 0"):
        await fetch_inputs(["http://127.0.0.1:9/nothing"], _no_store, max_bytes=10, what="image",
                           policy=inputs.UrlPolicy(["127.0.0.1:9"]))


# -- destinations ---------------------------------------------------------------------------


async def test_a_loopback_url_is_refused_by_default_and_never_reached(web: Web):
    url = f"{web.url}/ok/3?token=secret"

    with pytest.raises(ValueError) as raised:
        await fetch_inputs([url], _no_store, max_bytes=100, what="clip")

    assert str(raised.value) == f"clip 0 ({web.url}/ok/3): destination 127.0.0.1 is not allowed (loopback)"
    assert not isinstance(raised.value, TransientError)
    assert not web.reached and not web.server.requests


@pytest.mark.parametrize(("url", "reason"), [
    ("http://[::ffff:127.0.0.1]:PORT/ok/1", "destination ::ffff:127.0.0.1 is not allowed (loopback)"),
    ("http://[::ffff:7f00:1]:PORT/ok/1", "(loopback)"),
    ("http://[::1]:PORT/ok/1", "(loopback)"),
    ("http://localhost:PORT/ok/1", "destination localhost is not allowed (it resolves to a loopback address)"),
    ("http://2130706433:PORT/ok/1", "(it resolves to a loopback address)"),  # 127.0.0.1 as one number
    ("http://0.0.0.0:PORT/ok/1", "(unspecified)"),
    ("http://[::]:PORT/ok/1", "(unspecified)"),
    ("http://169.254.169.254/latest/meta-data/", "(cloud metadata service)"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "(cloud metadata service)"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "(cloud metadata service)"),
    ("http://100.100.100.200/latest/meta-data/", "(cloud metadata service)"),
    ("http://169.254.1.1/", "(link-local)"),
    ("http://[fe80::1]/", "(link-local)"),
    ("http://10.1.2.3/", "(private)"),
    ("https://172.16.0.1/", "(private)"),
    ("http://192.168.1.1/", "(private)"),
    ("http://[fd12:3456::1]/", "(private)"),
    ("http://[::ffff:10.0.0.1]/", "(private)"),
    ("http://100.64.0.1/", "(carrier-grade NAT)"),
    ("http://224.0.0.1/", "(multicast)"),
    ("http://240.0.0.1/", "(reserved)"),
    ("http://198.18.0.1/", "(not globally routable)"),
])
async def test_internal_destinations_are_refused_in_any_spelling(web: Web, url: str, reason: str):
    with pytest.raises(ValueError, match="image 0") as raised:
        await fetch_inputs([url.replace("PORT", str(web.port))], _no_store, max_bytes=100, what="image")

    assert reason in str(raised.value)
    assert not isinstance(raised.value, TransientError)
    assert not web.reached


async def test_a_redirect_from_an_allowed_host_to_a_refused_one_is_not_followed(web: Web, other_web: Web):
    target = f"{other_web.url}/ok/3"

    with pytest.raises(ValueError) as raised:
        await fetch_inputs([f"{web.url}/to/{target}"], _no_store, max_bytes=100, what="clip",
                           policy=inputs.UrlPolicy([web.host_port]))

    assert f"redirected to {target}: destination 127.0.0.1 is not allowed (loopback)" in str(raised.value)
    assert web.server.requests == [f"/to/{target}"]
    assert not other_web.reached


async def test_redirects_to_allowed_hosts_are_followed_a_bounded_number_of_times(web: Web, other_web: Web):
    policy = inputs.UrlPolicy([web.host_port, f"127.0.0.1:{other_web.port}"])
    relative = f"{web.url}/to//to/{other_web.url}/ok/2"  # a path-only Location, then another host

    assert await fetch_inputs([relative], _no_store, max_bytes=100, policy=policy) == [b"xx"]
    loop = f"{web.url}/to/" * 7 + f"{web.url}/ok/1"
    with pytest.raises(ValueError, match="more than 5 redirects"):
        await fetch_inputs([loop], _no_store, max_bytes=100, policy=policy)
    with pytest.raises(ValueError, match="redirected to a file URL"):
        await fetch_inputs([f"{web.url}/to/file:///etc/passwd"], _no_store, max_bytes=100, policy=policy)


@pytest.mark.parametrize("allow", ["127.0.0.0/8", "127.0.0.1", "127.0.0.1:PORT", "127.0.0.0/8:PORT",
                                   "localhost:PORT"])
async def test_allow_listed_destinations_are_fetched(web: Web, allow: str):
    policy = inputs.UrlPolicy([allow.replace("PORT", str(web.port))])
    host = "localhost" if allow.startswith("localhost") else "127.0.0.1"

    assert await fetch_inputs([f"http://{host}:{web.port}/ok/4"], _no_store, max_bytes=100,
                              policy=policy) == [b"xxxx"]


async def test_an_allow_list_entry_allows_that_port_only_and_a_name_not_its_address(web: Web, other_web: Web):
    policy = inputs.UrlPolicy([f"localhost:{web.port}"])

    assert await fetch_inputs([f"http://localhost:{web.port}/ok/1"], _no_store, max_bytes=100, policy=policy) == [b"x"]
    with pytest.raises(ValueError, match="destination localhost is not allowed"):
        await fetch_inputs([f"http://localhost:{other_web.port}/ok/1"], _no_store, max_bytes=100, policy=policy)
    with pytest.raises(ValueError, match="destination 127.0.0.1 is not allowed"):
        await fetch_inputs([f"{web.url}/ok/1"], _no_store, max_bytes=100, policy=policy)
    assert web.server.requests == ["/ok/1"] and not other_web.reached


async def test_proxy_variables_cannot_route_around_the_check(monkeypatch: pytest.MonkeyPatch, web: Web,
                                                             other_web: Web):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, other_web.url)  # a proxy would connect on our behalf, unchecked
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    with pytest.raises(ValueError, match="not allowed"):
        await fetch_inputs(["http://10.1.2.3/secret"], _no_store, max_bytes=100)
    assert await fetch_inputs([f"{web.url}/ok/2"], _no_store, max_bytes=100,
                              policy=inputs.UrlPolicy([web.host_port])) == [b"xx"]
    assert not other_web.reached


async def test_a_url_has_a_deadline_over_its_whole_download(web: Web):
    policy = inputs.UrlPolicy([web.host_port], deadline_s=0.5)  # each byte comes well within it
    started = time.monotonic()

    with pytest.raises(TransientError, match=r"clip 0 \(.*/slow/100\): not downloaded within 0.5 s"):
        await fetch_inputs([f"{web.url}/slow/100"], _no_store, max_bytes=1000, what="clip", policy=policy)

    assert time.monotonic() - started < 5  # the 100 bytes would take 10 s


@pytest.mark.parametrize("entry", ["", "http://host/", "10.0.0.0/33", "host:port", "[::1]", "a b"])
def test_bad_allow_list_entries_are_rejected(entry: str):
    with pytest.raises(ValueError, match="url_fetch_allow"):
        inputs.UrlPolicy([entry])


@pytest.mark.parametrize("value", ['["10.0.0.0/8", "files.internal:8080"]', "10.0.0.0/8, files.internal:8080"])
def test_the_allow_list_setting_takes_json_or_a_comma_list(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv("DUALPLANE_URL_FETCH_ALLOW", value)

    assert Settings().url_fetch_allow == ["10.0.0.0/8", "files.internal:8080"]


# -- through a worker -----------------------------------------------------------------------


class _UrlParams(BaseModel):
    url: str


@task("fetch_url", plane="python", params=_UrlParams)
def _fetch_url(ctx: TaskContext, p: _UrlParams) -> dict[str, Any]:
    (data,) = ctx.fetch_inputs([p.url], max_bytes=100, what="image")
    return {"bytes": len(data)}


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_worker_fetches_where_its_settings_allow(settings: Settings, web: Web, allowed: bool):
    registry = default_registry()
    registry.add(_fetch_url.__task_spec__)
    allow = [web.host_port] if allowed else [f"127.0.0.1:{free_port()}"]
    async with planes_with(settings, registry, url_fetch_allow=allow) as plane:
        graph = {"nodes": [{"id": "f", "task": "fetch_url", "plane": "python", "params": {"url": f"{web.url}/ok/5"}}]}
        job = await wait_for_job(plane, (await plane.submit(graph)).job_id)

    fetched = node(job, "f")
    if allowed:
        assert job.status == "succeeded" and fetched.output == {"bytes": 5}
    else:
        assert job.status == "failed" and fetched.attempts == 1  # a refusal is not retried
        assert fetched.error is not None and not fetched.error.transient
        assert fetched.error.message.endswith("destination 127.0.0.1 is not allowed (loopback)")
        assert not web.reached


async def _no_store(key: str) -> bytes:
    raise AssertionError("only URLs here")
