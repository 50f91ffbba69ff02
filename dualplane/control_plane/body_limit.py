"""One request-body cap for every HTTP route, as a pure ASGI middleware.

Routes that read their body themselves (``limits.read_json``) already stop at their cap, but
a route whose body FastAPI parses reads all of it first, however large. This middleware
sits in front of every route: a ``Content-Length`` over the cap is answered 413 before
anything is read, and a body that turns out longer (chunked, or a lying length) is cut off
at the cap — the app's ``receive`` raises, whatever the app then sends is dropped, and the
client gets the 413. Caps are per ``(method, path)`` where a route needs a bigger one
(uploads); every other route gets the default.

It is a plain ASGI callable rather than ``@app.middleware("http")``: that style runs each
request through extra tasks and memory streams, a large share of a small request's CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM = b"application/problem+json"


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes its cap (handled by :class:`BodyLimit`)."""


class BodyLimit:
    """:param max_bytes: the cap of every route not in ``route_caps``.
    :param route_caps: ``{(method, path): cap}`` for routes with their own cap."""

    def __init__(self, app: ASGIApp, *, max_bytes: int,
                 route_caps: Mapping[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_caps = dict(route_caps or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.route_caps.get((scope["method"], scope["path"]), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await _reject(send, f"body of {declared} bytes is over the limit of {cap} bytes")
            return
        guard = _Guard(receive, send, cap)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.exceeded:
                raise  # the app's own failure; the overflow's consequences are ours to answer
        if guard.exceeded and not guard.started:
            await _reject(send, f"body is over the limit of {cap} bytes")


class _Guard:
    """The counting ``receive`` and the ``send`` that goes quiet once the cap is passed."""

    __slots__ = ("_receive", "_send", "cap", "exceeded", "received", "started")

    def __init__(self, receive: Receive, send: Send, cap: int) -> None:
        self._receive = receive
        self._send = send
        self.cap = cap
        self.received = 0
        self.exceeded = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.cap:
                self.exceeded = True
                raise BodyTooLarge(f"body is over the limit of {self.cap} bytes")
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            return  # the app's reaction to the cut-off body (often a 400); the 413 replaces it
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _reject(send: Send, detail: str) -> None:
    body = orjson.dumps({"type": "about:blank", "title": "Request too large", "status": 413,
                         "detail": detail})
    headers: list[Any] = [(b"content-type", PROBLEM), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
