"""The hub's WebSocket side: one :class:`Connection` per client (a bounded outgoing queue, so a
slow client is closed and never stalls the others), the close codes, the messages' text, and the
``/ws`` route with its token check. It knows nothing of Redis or of seqs: the hub hands it
complete WebSocket frames (:func:`text_frame`) to :meth:`Connection.push`.

Fan-out cost is per delivery, so the frames are built once per message (server frames are not
masked and, without per-message deflate, identical for every connection) and each connection's
queue is written with ONE ``transport.write`` per loop iteration (:class:`Flusher`) straight to
uvicorn's ``websockets-sansio`` transport, instead of one ASGI ``send`` (a websockets frame
serialisation and a ``send`` syscall) per message. Backpressure is the server's: while the
transport is paused the queue grows and overflows into a 4008 close, as with ASGI sends. Any
other server, or a negotiated extension, gets the plain ASGI path (one send per message)."""

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
from websockets.server import ServerProtocol

from dualplane.control_plane.auth import Authenticator, AuthError, Principal, bearer_token

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4008
CLOSE_RESTART = 1012
TOKEN_EXPIRED = "token expired"

Verify = Callable[[str], Principal]


class Serving(Protocol):
    """What the ``/ws`` route hands an authenticated WebSocket to (the hub)."""

    async def serve(self, websocket: WebSocket, principal: Principal, *, verify: Verify | None = None) -> None: ...


def text_frame(payload: bytes) -> bytes:
    """A whole unmasked text frame carrying ``payload`` (valid UTF-8): what a server sends."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def text_of(frame: bytes) -> str:
    """The text a :func:`text_frame` carries (for servers that only take ASGI sends)."""
    n = frame[1]
    return frame[2 if n < 126 else 4 if n == 126 else 10:].decode()


def error(message: str, job_id: str | None = None) -> bytes:
    """An ``error`` message (``jobId`` when the message it answers had one)."""
    body: dict[str, Any] = {"type": "error", "message": message}
    if job_id is not None:
        body["jobId"] = job_id
    return text_frame(orjson.dumps(body))


PONG = text_frame(b'{"type":"pong"}')


class Flusher:
    """Writes every connection that was pushed to, once, after the current callback: the
    messages one Redis read dispatches leave as one write per connection."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due: list[Connection] = []

    def add(self, conn: Connection) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._run)
        self._due.append(conn)

    def _run(self) -> None:
        due, self._due = self._due, []
        for conn in due:
            conn.flush()


def _direct_protocol(send: Any) -> Any:
    """uvicorn's ``websockets-sansio`` protocol behind ``send`` when frames may be written to its
    transport as they are (nothing negotiated that would transform them), else None."""
    owner = _owner_of(send)
    conn = getattr(owner, "conn", None)
    if (isinstance(conn, ServerProtocol) and not conn.extensions
            and isinstance(getattr(owner, "writable", None), asyncio.Event)
            and hasattr(owner, "close_sent") and hasattr(owner, "disconnected")):
        return owner
    return None


class Connection:
    """One WebSocket: a bounded outgoing queue of frames, written by the hub's :class:`Flusher`
    (or, on the ASGI path and while the transport is paused, by the connection's sender task)."""

    __slots__ = (
        "_abort_handle",
        "_direct",
        "_due",
        "_expiry",
        "_flusher",
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
                 on_close: Callable[[Connection], None], flusher: Flusher) -> None:
        self.ws = ws
        self.on_close = on_close
        self.principal = principal
        self.limit = limit
        self.queue: deque[bytes] = deque()
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
        self._flusher = flusher
        self._direct = _direct_protocol(ws._send)
        self._due = False  # in the flusher's list

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

    def push(self, frame: bytes) -> bool:
        """Queue one :func:`text_frame` without waiting. Returns False when the connection is
        closing (or starts closing now because the queue is full)."""
        if self.closing:
            return False
        queue = self.queue
        if len(queue) >= self.limit:
            self.close(CLOSE_TOO_SLOW, f"client too slow: {len(queue)} messages buffered")
            return False
        queue.append(frame)
        if not self._due:
            if self._direct is not None:
                self._due = True
                self._flusher.add(self)
            else:
                self._wake_sender()
        return True

    def flush(self) -> None:
        """Write everything queued in one go, or leave it to the sender while the transport is
        paused (the server's backpressure). Only connections with a direct path get here."""
        self._due = False
        proto = self._direct
        queue = self.queue
        if self.closing or not queue:
            return
        if proto.close_sent or proto.disconnected or proto.transport.is_closing():
            # The peer or the server ended it (serve() sees the disconnect); a closed
            # transport would raise on write.
            self.closing = True
            queue.clear()
            self._wake_sender()
            return
        if not proto.writable.is_set():
            self._wake_sender()
            return
        if len(queue) == 1:
            proto.transport.write(queue.popleft())
        else:
            proto.transport.write(b"".join(queue))
            queue.clear()
        if self._room is not None:
            self._made_room()

    def _wake_sender(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    def _made_room(self) -> None:
        room = self._room
        if room is not None and len(self.queue) <= self.limit // 2:
            self._room = None
            if not room.done():
                room.set_result(None)

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
        """Send what the flusher cannot (ASGI path; a paused transport), then the close frame."""
        send = self._send
        queue = self.queue
        proto = self._direct
        loop = asyncio.get_running_loop()
        try:
            while True:
                if proto is None:
                    while queue:
                        await send({"type": "websocket.send", "text": text_of(queue.popleft())})
                        self._made_room()
                elif queue and not self.closing:
                    await proto.writable.wait()
                    self.flush()
                    continue
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
        transport = getattr(_owner_of(self.ws._send), "transport", None)
        if transport is not None:
            transport.abort()  # uvicorn then reports a disconnect, which ends serve()
        if self.sender is not None:
            self.sender.cancel()


def _owner_of(send: Any, depth: int = 4) -> Any:
    """The server protocol object whose bound method is behind ``send`` (the one with an
    abortable ``transport``), or None."""
    owner = getattr(send, "__self__", None)
    if hasattr(getattr(owner, "transport", None), "abort"):
        return owner
    if depth:
        for cell in getattr(send, "__closure__", None) or ():
            with contextlib.suppress(ValueError):
                if callable(cell.cell_contents):
                    found = _owner_of(cell.cell_contents, depth - 1)
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
