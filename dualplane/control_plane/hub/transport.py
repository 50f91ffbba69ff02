"""The hub's WebSocket side: one :class:`Connection` per client (a bounded outgoing queue drained
by its own sender task, so a slow client is closed and never stalls the others), the close codes,
the messages' text, and the ``/ws`` route with its token check. It knows nothing of Redis or of
seqs: the hub hands it text to :meth:`Connection.push`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from fastapi import FastAPI
from starlette.websockets import WebSocket, WebSocketState

from dualplane.control_plane.auth import Authenticator, AuthError, Principal, bearer_token

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4008
CLOSE_RESTART = 1012
TOKEN_EXPIRED = "token expired"
PONG = '{"type":"pong"}'

Verify = Callable[[str], Principal]


class Serving(Protocol):
    """What the ``/ws`` route hands an authenticated WebSocket to (the hub)."""

    async def serve(self, websocket: WebSocket, principal: Principal, *, verify: Verify | None = None) -> None: ...


def error(message: str, job_id: str | None = None) -> str:
    """An ``error`` message (``jobId`` when the message it answers had one)."""
    body: dict[str, Any] = {"type": "error", "message": message}
    if job_id is not None:
        body["jobId"] = job_id
    return orjson.dumps(body).decode()


class Connection:
    """One WebSocket: a bounded outgoing queue drained by its own sender task."""

    __slots__ = (
        "_abort_handle",
        "_expiry",
        "_room",
        "_send",
        "_wake",
        "close_code",
        "close_reason",
        "closing",
        "limit",
        "on_close",
        "principal",
        "queue",
        "sender",
        "subs",
        "verify",
        "ws",
    )

    def __init__(self, ws: WebSocket, principal: Principal, limit: int,
                 on_close: Callable[[Connection], None]) -> None:
        self.ws = ws
        self.on_close = on_close
        self.principal = principal
        self.limit = limit
        self.queue: deque[str] = deque()
        #: job id -> the hub's subscription on this connection (opaque here: the transport knows no seqs)
        self.subs: dict[str, object] = {}
        self.closing = False
        self.close_code = 0
        self.close_reason = ""
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self._abort_handle: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.verify: Verify | None = None
        self._send = ws.send

    def authorise(self, principal: Principal) -> None:
        """Serve ``principal`` until its token expires: one timer per connection, moved (not
        added) on each re-authentication, so an idle connection never wakes the loop."""
        self.principal = principal
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if principal.expires_at is not None:
            delay = principal.expires_at - time.time()
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self.close, CLOSE_UNAUTHORIZED, TOKEN_EXPIRED)

    def push(self, text: str) -> bool:
        """Queue one message without waiting. Returns False when the connection is closing
        (or starts closing now because the queue is full)."""
        if self.closing:
            return False
        queue = self.queue
        if len(queue) >= self.limit:
            self.close(CLOSE_TOO_SLOW, f"client too slow: {len(queue)} messages buffered")
            return False
        queue.append(text)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
        return True

    def close(self, code: int, reason: str) -> None:
        """Stop queueing, drop what is queued and let the sender send the close frame."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.queue.clear()
        for fut in (self._wake, self._room):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._wake = self._room = None
        self.on_close(self)

    async def wait_room(self) -> None:
        """Wait until at most half the queue is used (replays respect backpressure)."""
        while not self.closing and len(self.queue) > self.limit // 2:
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    async def run_sender(self, close_timeout_s: float) -> None:
        send = self._send
        queue = self.queue
        loop = asyncio.get_running_loop()
        half = self.limit // 2
        try:
            while True:
                while queue:
                    await send({"type": "websocket.send", "text": queue.popleft()})
                    room = self._room
                    if room is not None and len(queue) <= half:
                        self._room = None
                        if not room.done():
                            room.set_result(None)
                if self.closing:
                    break
                self._wake = loop.create_future()
                await self._wake
            # A client that stopped reading may never let the close frame out: give up on it
            # after close_timeout_s (abort the transport where the server exposes it).
            self._abort_handle = loop.call_later(close_timeout_s, self._abort)
            if self.ws.application_state is WebSocketState.CONNECTED:
                await self.ws.close(self.close_code, self.close_reason)
        except Exception:
            self.closing = True
        finally:
            if self._abort_handle is not None:
                self._abort_handle.cancel()

    def _abort(self) -> None:
        """Hard close of a peer that never reads, so its close frame cannot get out.

        ASGI has no abort; the server's transport is found behind the ASGI ``send`` (a bound
        method of uvicorn's protocol, possibly wrapped in Starlette closures). Best effort:
        where it is not found, the sender stops and the connection ends with the server."""
        transport = _transport_of(self.ws._send)
        if transport is not None:
            transport.abort()  # uvicorn then reports a disconnect, which ends serve()
        if self.sender is not None:
            self.sender.cancel()


def _transport_of(send: Any, depth: int = 4) -> Any:
    owner = getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        return transport
    if depth:
        for cell in getattr(send, "__closure__", None) or ():
            with contextlib.suppress(ValueError):
                if callable(cell.cell_contents):
                    found = _transport_of(cell.cell_contents, depth - 1)
                    if found is not None:
                        return found
    return None


def _token_of(websocket: WebSocket) -> str:
    token = websocket.query_params.get("token")
    if token:
        return token
    authorization = websocket.headers.get("authorization")
    if not authorization:
        raise AuthError("missing token (?token=<jwt> or Authorization: Bearer <jwt>)")
    return bearer_token(authorization)


def clip_reason(text: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    data = text.encode()[:123]
    return data.decode("utf-8", "ignore")


def add_websocket_route(app: FastAPI, hub: Serving, authenticator: Authenticator, path: str = "/ws") -> None:
    """Mount the hub at ``path``. Authentication: ``?token=<jwt>`` (browsers cannot set
    headers on a WebSocket) or ``Authorization: Bearer <jwt>``. A missing, invalid or expired
    token is accepted and then closed with 4401 and a reason naming the problem."""

    @app.websocket(path)
    async def websocket_endpoint(websocket: WebSocket) -> None:
        try:
            principal = await authenticator.authenticate(_token_of(websocket))
        except AuthError as exc:
            await websocket.accept()
            await websocket.close(CLOSE_UNAUTHORIZED, clip_reason(str(exc)))
            return
        await hub.serve(websocket, principal, verify=authenticator.verify)
