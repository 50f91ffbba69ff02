"""Property-based API testing: schemathesis drives the real app (served by uvicorn) from its
own OpenAPI document; no generated request may produce a 5xx."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from dualplane.common.services import free_port
from dualplane.common.settings import Settings
from dualplane.control_plane import create_app
from dualplane.control_plane.auth import Authenticator
from tests.conftest import TEST_JWT_SECRET
from tests.helpers import unique_name

#: Examples per operation: enough to reach odd corners, small enough for `make test`.
EXAMPLES_PER_OPERATION = 25


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
    token = Authenticator.from_settings(app_settings).mint("fuzzer", "user")
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
                 "/jobs/{job_id}/artifacts", "/compose", "/tasks", "/workers", "/me/preferences", "/uploads"):
        assert path in paths, path
    assert paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/Graph"}
