"""POST /jobs reads its caller, ``?wait=`` and ``Idempotency-Key`` itself (``api_common.submission``)
instead of having FastAPI solve them per request: it must answer and be documented exactly as the
declared parameters (``User``, ``WaitQuery``, ``IdempotencyKey``) are, which a route here declares."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from dualplane.common.settings import Settings
from dualplane.control_plane.api_common import (
    SUBMISSION_PARAMETERS,
    IdempotencyKey,
    User,
    WaitQuery,
    submission,
)
from dualplane.control_plane.app import create_app
from dualplane.control_plane.auth import Authenticator

SECRET = "submission-params-test-secret-of-32-bytes-or-more"


@pytest.fixture
def app() -> FastAPI:
    """The control plane's app (its error handlers), never started: no Redis is reached."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1", s3_endpoint=None, jwt_secret=SECRET))
    app.state.authenticator.revocations = None  # no accounts store to ask

    @app.post("/declared")
    async def declared(who: User, wait: WaitQuery = None, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
        return {"user": who.user, "wait": wait, "key": idempotency_key}

    @app.post("/read", openapi_extra={"parameters": SUBMISSION_PARAMETERS})
    async def read(request: Request) -> dict[str, Any]:
        who, wait, key = await submission(request)
        return {"user": who.user, "wait": wait, "key": key}

    return app


def test_the_parameters_are_documented_as_declared_ones_are(app: FastAPI):
    paths = app.openapi()["paths"]
    assert paths["/read"]["post"]["parameters"] == paths["/declared"]["post"]["parameters"]


@pytest.mark.parametrize(("query", "headers"), [
    ({}, {}),
    ({"wait": "2.5"}, {"Idempotency-Key": "k-1"}),
    ({"wait": "0"}, {}),
    ({"wait": "604800"}, {}),
    ({"wait": "604801"}, {}),
    ({"wait": "-1"}, {}),
    ({"wait": "inf"}, {}),
    ({"wait": "nan"}, {}),
    ({"wait": "1e400"}, {}),
    ({"wait": ""}, {}),
    ({"wait": "soon"}, {"Idempotency-Key": "k" * 201}),
    ({}, {"Idempotency-Key": "k" * 200}),
    ({"wait": "nan"}, {"Authorization": ""}),
    ({"wait": "nan"}, {"Authorization": "Basic abc"}),
    ({}, {"Authorization": "Bearer not-a-token"}),
])
async def test_answers_match_the_declared_parameters(app: FastAPI, query: dict[str, str], headers: dict[str, str]):
    token = Authenticator(algorithm="HS256", secret=SECRET).mint("alice")
    sent = {"Authorization": f"Bearer {token}", **headers}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp") as client:
        declared = await client.post("/declared", params=query, headers=sent)
        read = await client.post("/read", params=query, headers=sent)
    assert (read.status_code, read.json(), read.headers.get("www-authenticate")) == \
        (declared.status_code, declared.json(), declared.headers.get("www-authenticate"))
