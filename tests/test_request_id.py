"""The request-id middleware (``control_plane/request_id.py``) on a bare Starlette app: the
client's id is kept when it is one we keep, else a fresh one; the routes and the log lines
see it; every response carries it, the body cap's 413s and the error handlers' answers too."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from dualplane.common import logs
from dualplane.control_plane.body_limit import BodyLimit
from dualplane.control_plane.request_id import RequestId

log = logging.getLogger("tests.request_id")


class Boom(Exception):
    pass


async def echo(request: Request) -> JSONResponse:
    log.warning("inside the request")
    await request.body()
    return JSONResponse({"request_id": request.state.request_id})


async def boom(request: Request) -> JSONResponse:
    raise Boom


async def own_header(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"X-Request-Id": "set-by-the-route"})


async def handled(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "boom"}, status_code=409)


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/boom", boom),
                            Route("/own", own_header)], exception_handlers={Boom: handled})
    app.add_middleware(BodyLimit, max_bytes=100)  # inside, as create_app has it
    app.add_middleware(RequestId)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp")


async def test_the_clients_id_is_kept_and_seen_by_route_log_and_response(client: httpx.AsyncClient):
    handler = logging.Handler()
    seen: list[logging.LogRecord] = []
    handler.emit = seen.append  # type: ignore[method-assign]
    handler.addFilter(logs.ContextFilter())
    log.addHandler(handler)
    try:
        response = await client.post("/echo", content=b"{}", headers={"X-Request-Id": "req-kept-1"})
    finally:
        log.removeHandler(handler)
    assert response.json() == {"request_id": "req-kept-1"}
    assert response.headers["X-Request-Id"] == "req-kept-1"
    assert [(r.request_id, r.plane) for r in seen] == [("req-kept-1", "control")]  # type: ignore[attr-defined]


@pytest.mark.parametrize("incoming", ["", "x" * 129, "tab\there"])
async def test_an_id_we_do_not_keep_is_replaced_by_a_fresh_one(client: httpx.AsyncClient, incoming: str):
    headers = {"X-Request-Id": incoming} if incoming else {}
    first = await client.post("/echo", content=b"{}", headers=headers)
    second = await client.post("/echo", content=b"{}", headers=headers)
    made = first.headers["X-Request-Id"]
    assert len(made) == 32 and int(made, 16) >= 0 and first.json()["request_id"] == made
    assert second.headers["X-Request-Id"] != made


async def test_an_id_of_128_printable_characters_is_kept(client: httpx.AsyncClient):
    incoming = "a-Z.0 9" * 18 + "ab"
    assert len(incoming) == 128
    response = await client.post("/echo", content=b"{}", headers={"X-Request-Id": incoming})
    assert response.headers["X-Request-Id"] == incoming == response.json()["request_id"]


async def test_the_body_caps_413s_carry_the_id(client: httpx.AsyncClient):
    declared = await client.post("/echo", content=b"x" * 200, headers={"X-Request-Id": "req-413"})
    assert declared.status_code == 413 and declared.headers["X-Request-Id"] == "req-413"

    async def chunks():  # no Content-Length: cut off while reading
        for _ in range(5):
            yield b"x" * 50

    streamed = await client.post("/echo", content=chunks(), headers={"X-Request-Id": "req-413-chunked"})
    assert streamed.status_code == 413 and streamed.headers["X-Request-Id"] == "req-413-chunked"


async def test_error_answers_carry_the_id_and_a_route_cannot_set_another(client: httpx.AsyncClient):
    error = await client.get("/boom", headers={"X-Request-Id": "req-error"})
    assert error.status_code == 409 and error.headers["X-Request-Id"] == "req-error"
    missing = await client.get("/nowhere", headers={"X-Request-Id": "req-404"})
    assert missing.status_code == 404 and missing.headers["X-Request-Id"] == "req-404"
    own = await client.get("/own", headers={"X-Request-Id": "req-own"})
    assert own.headers.get_list("X-Request-Id") == ["req-own"]
