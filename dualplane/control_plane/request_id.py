"""The request id of every HTTP request, as a pure ASGI middleware.

A request's ``X-Request-Id`` (1 to 128 printable characters) is kept, else a fresh uuid4 hex
is made; the routes read it as ``request.state.request_id`` (it goes into the job and its
events), every log line inside the request carries it (``logs.bound``), and every response the
app sends carries it back in the header — errors, and the 413s of :class:`.BodyLimit`, which
sits inside this middleware for that.

It is a plain ASGI callable rather than ``@app.middleware("http")``: that style runs each
request through a task of its own, memory streams and a second response object, the largest
share of a small request's CPU (see :mod:`.body_limit`).
"""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dualplane.common import logs

HEADER = "X-Request-Id"
_HEADER = HEADER.lower().encode("latin-1")
MAX_LENGTH = 128


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # what request.state reads
        value = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                headers.append((_HEADER, value))
                message = {**message, "headers": headers}
            await send(message)

        with logs.bound(request_id=request_id, plane="control"):
            await self.app(scope, receive, send_with_id)


def incoming_id(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` when it is one we keep (1-128 printable characters)."""
    for name, raw in scope["headers"]:
        if name == _HEADER:
            value = raw.decode("latin-1")
            return value if 0 < len(value) <= MAX_LENGTH and value.isprintable() else None
    return None
