"""Property-based API testing: schemathesis drives the real app (served by uvicorn) from its
own OpenAPI document; no generated request may produce a 5xx."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_connect

from dualplane.common.settings import Settings
from dualplane.control_plane import create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.devstack.services import free_port
from tests.conftest import TEST_JWT_SECRET
from tests.helpers import unique_name

#: Examples per operation: enough to reach odd corners, small enough for `make test`.
EXAMPLES_PER_OPERATION = 25
#: Hostile requests per test below (each draws its route): a few seconds each on two cores.
HOSTILE_EXAMPLES = 300
WS_EXAMPLES = 80


@pytest.fixture(scope="module")
def served(redis_server, s3_server) -> Iterator[tuple[str, str]]:
    """The whole control plane (its own lifespan, runner and hub) on a real port, in a thread."""
    app_settings = Settings(redis_url=redis_server.url, key_prefix=f"{unique_name('fz')}:",
                            s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                            s3_secret_key=s3_server.secret_key, s3_bucket=unique_name("fuzz"),
                            jwt_secret=TEST_JWT_SECRET, submit_rate_per_min=0, shutdown_grace_s=0.5,
                            max_wait_s=0.5)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port,
                                           log_level="warning", ws="websockets-sansio"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "control plane did not start"
        time.sleep(0.05)
    token = Authenticator.from_settings(app_settings.auth).mint("fuzzer", "user")
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(20)


def test_no_generated_request_gets_a_server_error(served):
    """Every operation, EXAMPLES_PER_OPERATION generated requests each (schemathesis strategies
    run by hypothesis directly: its pytest plugin does not work with pytest 9 yet)."""
    base_url, token = served
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    results = list(schema.get_all_operations())
    broken = [str(r.err()) for r in results if not hasattr(r, "ok")]
    assert not broken, broken
    operations = [r.ok() for r in results]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}")

        no_server_error()


def test_the_openapi_document_describes_every_route(served):
    base_url, _ = served
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/cancel", "/jobs/batch",
                 "/jobs/{job_id}/artifacts", "/compose", "/tasks", "/workers", "/me/preferences", "/uploads",
                 "/uploads/{sha256}/{name}", "/jobs/{job_id}/rerun", "/outputs"):
        assert path in paths, path
    assert paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/Graph"}
    # /compose reads its body itself (through the caps) and still documents it
    assert paths["/compose"]["post"]["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ComposeRequest"}
    schemas = httpx.get(f"{base_url}/openapi.json").json()["components"]["schemas"]
    assert set(schemas["ComposeRequest"]["properties"]) == {"intent", "brief", "dry_run", "strict", "name"}
    assert "StructuredIntent" in schemas and "Inputs" in schemas and "Brief" in schemas


# -- hostile input, aimed where the generated requests above do not reach ---------------------
#
# schemathesis keeps to the documented types; these go past them: numbers Redis and the
# parsers cannot take, ids that name other keys, bodies nested past every parser, bytes that
# are no JSON at all. Every route, every query parameter; never a 5xx, never a hang.

#: Values that are numbers to a careless reader and trouble to the next layer.
HOSTILE_NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e308", "4.9e-324",
                   "-0", "0", "-1", "1.5", "1e3", "0x10", "1_000", " 1", "1 ", "", "\u0661\u0662",
                   str(2**53), str(2**53 + 1), str(2**63), str(2**64), "9" * 400, "-" + "9" * 400]
#: Strings that break keys, paths, parsers or terminals.
HOSTILE_STRINGS = ["", " ", ".", "..", "../..", "/", "a/b", "a:b", "*", "?", "[", "{", "\\", "'", '"', "%",
                   "%00", "\x00", "\x7f", "\r\n", "\u00e9", "\U0001f4a5", "\u202e", "x" * 1000, "x" * 70,
                   "null", "true", "[]", "{}", "$ref", "-", "_"]
#: Job ids a path may carry (the live job's own id is added at run time).
HOSTILE_IDS = [s for s in HOSTILE_STRINGS if s] + ["x" * 64, "x" * 65, "a" * 1000, "caf\u00e9", "x:events"]

no_surrogates = st.characters(exclude_categories=("Cs",))
query_values = st.one_of(st.sampled_from(HOSTILE_NUMBERS + HOSTILE_STRINGS),
                         st.integers(min_value=-(2**80), max_value=2**80).map(str),
                         st.floats(allow_nan=True, allow_infinity=True).map(repr),
                         st.text(no_surrogates, max_size=40))
#: Header values HTTP itself lets through (visible ASCII inside, no edge spaces).
header_values = st.one_of(st.sampled_from(["", "x" * 300, "a/b; q=1", "*/*", "text/plain", "a b",
                                           "application/json; charset=utf-16", "multipart/form-data"]),
                          st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40))


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    query: tuple[str, ...]
    body: bool


def routes_of(openapi: dict[str, Any]) -> list[Route]:
    found = []
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            found.append(Route(method.upper(), path, tuple(p["name"] for p in params if p["in"] == "query"),
                               "requestBody" in operation))
    return found


class LiveJob:
    """A job of the fuzzer's that exists (so that hostile queries reach Redis, not a 404);
    made again when a fuzzed DELETE purged it."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self._id: str | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            response = self.client.post("/jobs", json={"nodes": [{"id": "e", "task": "emit", "plane": "control"}]})
            assert response.status_code == 201, response.text
            self._id = response.json()["id"]
        return self._id

    def saw(self, method: str, path: str, response: httpx.Response) -> None:
        if method == "DELETE" and response.status_code == 204 and self._id and self._id in path:
            self._id = None


@pytest.fixture(scope="module")
def fuzz_client(served) -> Iterator[tuple[httpx.Client, list[Route], LiveJob]]:
    base_url, token = served
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as client:
        routes = [r for r in routes_of(client.get("/openapi.json").json()) if r.path != "/metrics"]
        yield client, routes, LiveJob(client)


def fill_path(path: str, job_id: str) -> str:
    return path.replace("{job_id}", quote(job_id, safe=""))


def assert_no_server_error(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), (what, response.text[:200])


@st.composite
def hostile_request(draw: st.DrawFn, routes: list[Route]) -> tuple[Route, str | None, dict[str, Any]]:
    """A route, a hostile job id for its path (None: the live job's) and hostile values in
    its query parameters (some left out)."""
    route = draw(st.sampled_from(routes))
    job_id = draw(st.one_of(st.just(None), st.sampled_from(HOSTILE_IDS), st.text(no_surrogates, min_size=1)))
    params = {}
    for name in route.query:
        if draw(st.booleans()):
            params[name] = draw(st.lists(query_values, min_size=1, max_size=2))
    return route, job_id, params


def test_hostile_query_and_path_values_never_get_a_server_error(fuzz_client):
    client, routes, live = fuzz_client

    @given(request=hostile_request(routes))
    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def no_server_error(request: tuple[Route, str | None, dict[str, Any]]) -> None:
        route, job_id, params = request
        method, path = route.method, fill_path(route.path, live.id if job_id is None else job_id)
        response = client.request(method, path, params=params)
        live.saw(method, path, response)
        assert_no_server_error(response, f"{method} {path} {params}")

    no_server_error()


def deep_text(depth: int, kind: str) -> str:
    opener, closer = ("[", "]") if kind == "list" else ('{"a":', "}")
    return opener * depth + "1" + closer * depth


BODY_ROUTES = {("POST", "/jobs"), ("POST", "/jobs/batch"), ("POST", "/compose"), ("PUT", "/me/preferences"),
               ("POST", "/uploads")}
#: Where a deep value goes, per body route: the document with HOLE where it goes.
DEEP_PLACES = {
    "/jobs": ['HOLE', '{"nodes":[{"id":"a","task":"noop","plane":"python","params":{"value":HOLE}}]}',
              '{"nodes":[{"id":"a","task":"noop","plane":"python"}],"metadata":{"m":HOLE}}',
              '{"nodes":[{"task":"sleep","plane":"python","params":HOLE}]}'],
    "/jobs/batch": ['{"graphs":[{"nodes":[{"id":"a","task":"noop","plane":"python","params":{"value":HOLE}}]}]}',
                    '{"graphs":HOLE}', 'HOLE'],
    "/compose": ['{"intent":{"prompt":"x","options":{"o":HOLE}},"dry_run":true}', '{"intent":HOLE}', 'HOLE'],
    "/me/preferences": ['{"p":HOLE}', 'HOLE'],
    "/uploads": ['HOLE'],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(no_surrogates, max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(no_surrogates, max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def hostile_body(draw: st.DrawFn, path: str, tasks: list[tuple[str, str]]) -> bytes:
    """Nested past every limit; random bytes; or JSON-ish values (NaN, huge integers) as a
    whole body or as the params of a real task."""
    kind = draw(st.sampled_from(["deep", "bytes", "value", "params"]))
    if kind == "deep":
        place = draw(st.sampled_from(DEEP_PLACES.get(path, ["HOLE"])))
        depth = draw(st.sampled_from([63, 64, 65, 100, 199, 200, 254, 255, 300, 1000, 20_000]))
        return place.replace("HOLE", deep_text(depth, draw(st.sampled_from(["list", "dict"])))).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    value = draw(json_values)
    if kind == "params":
        task, plane = draw(st.sampled_from(tasks))
        value = {"nodes": [{"id": "n", "task": task, "plane": plane, "params": value}]}
        if path == "/jobs/batch":
            value = {"graphs": [value]}
    return json.dumps(value, allow_nan=True).encode()


def test_hostile_bodies_never_get_a_server_error(fuzz_client):
    client, routes, live = fuzz_client
    tasks = [(t["name"], t["plane"]) for t in client.get("/tasks").json()["tasks"]]
    # the routes that read a body, twice as often as the others (which must ignore theirs)
    readers = [r for r in routes if (r.method, r.path) in BODY_ROUTES]
    assert len(readers) == len(BODY_ROUTES)

    @given(route=st.sampled_from(readers + readers + routes), data=st.data(), content_type=header_values,
           idempotency_key=st.one_of(st.none(), header_values))
    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def no_server_error(route: Route, data: st.DataObject, content_type: str, idempotency_key: str | None) -> None:
        method, path = route.method, fill_path(route.path, live.id)
        body = data.draw(hostile_body(route.path, tasks))
        params = {"name": data.draw(st.sampled_from(["f.bin", *HOSTILE_STRINGS]))} if path == "/uploads" else {}
        headers = {"Content-Type": content_type, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
        response = client.request(method, path, content=body, params=params, headers=headers)
        live.saw(method, path, response)
        assert_no_server_error(response, f"{method} {path} {body[:200]!r}")

    no_server_error()


def test_hostile_websocket_messages_get_errors_and_the_connection_stays(served, fuzz_client):
    base_url, token = served
    _, _, live = fuzz_client
    url = f"ws{base_url.removeprefix('http')}/ws?token={token}"
    job_id = live.id
    messages = st.one_of(
        st.text(no_surrogates, max_size=200),
        st.sampled_from([deep_text(d, k) for d in (65, 300, 5000) for k in ("list", "dict")]),
        st.fixed_dictionaries({"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "nope"]),
                               "jobId": st.one_of(st.just(job_id), st.sampled_from(HOSTILE_IDS), json_values),
                               "since": st.one_of(json_values, st.integers(min_value=-(2**70), max_value=2**70))})
        .map(lambda m: json.dumps(m, allow_nan=True)),
    )

    with ws_connect(url, compression=None) as ws:

        @given(message=messages)
        @settings(max_examples=WS_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def answered(message: str) -> None:
            ws.send(message)
            ws.send('{"type":"ping"}')
            while (reply := json.loads(ws.recv(timeout=10)))["type"] != "pong":
                assert reply["type"] in ("error", "snapshot", "update", "unsubscribed"), reply

        answered()
        assert ws.close_code is None
