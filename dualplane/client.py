"""A small client of the control-plane API: sync :class:`Client`, async :class:`AsyncClient`.

Both speak the same HTTP API (httpx) and follow a job over the WebSocket hub with
:meth:`~Client.watch`. The two classes share everything that is not I/O (request building,
response checking, the watch bookkeeping), so they cannot drift apart.

Why `watch` reconnects on its own: the job's event stream is durable and every event carries a
gap-free ``seq``, so a client that resubscribes with ``since=<last seq>`` misses nothing and sees
nothing twice. A dropped connection, a server restart or a ``4008`` (too slow) close is therefore
only a pause, never an error.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import connect as ws_connect_sync

from dualplane.common.settings import ClientSettings
from dualplane.common.statuses import FINISHED

__all__ = ["JOB_TERMINAL", "ApiError", "AsyncClient", "Client", "is_job_end"]

JOB_TERMINAL = FINISHED
#: Seconds of HTTP timeout on top of a server-side ``wait``.
DEFAULT_TIMEOUT_S = 30.0
#: Close codes of the hub: the client read too slowly (resubscribe), the token was refused.
WS_TOO_SLOW, WS_BAD_TOKEN = 4008, 4401
#: Consecutive failed connection attempts after which `watch` gives up.
DEFAULT_MAX_RECONNECTS = 8
_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
#: Further attempts of a call that met an outage (503/502/504, a dropped connection).
DEFAULT_RETRIES = 4
#: Longest Retry-After the client honours between two attempts.
MAX_RETRY_AFTER_S = 5.0
_RETRY_STATUSES = frozenset({502, 503, 504})
#: Calls whose repetition changes nothing; a submission is one when it carries an Idempotency-Key.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ApiError(Exception):
    """An error answer of the API (its ``application/problem+json`` body), or a refused
    WebSocket. ``node_errors`` maps a node id (``"_graph"`` for the whole graph) to a list of
    ``{"field", "message"}`` entries when a graph was rejected."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        node_errors: dict[str, list[dict[str, Any]]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.status, self.title, self.detail = status, title, detail
        self.node_errors = node_errors or {}
        self.body = body or {}  # the whole problem document (a batch's `errors` by index...)
        super().__init__(status, title, detail, self.node_errors)

    def __str__(self) -> str:
        lines = [f"{self.status} {self.title}" + (f": {self.detail}" if self.detail else "")]
        lines += _error_lines(self.node_errors, "  ")
        errors = self.body.get("errors")
        if isinstance(errors, dict):  # a batch: graph index -> node_errors
            for index, node_errors in errors.items():
                lines += _error_lines(node_errors, f"  graphs[{index}].")
        elif isinstance(errors, list) and len(errors) > 1:  # request fields
            lines += [
                f"  {e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict)
            ]
        return "\n".join(lines)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read the problem body; fall back to the reason phrase for a non-JSON answer."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return cls(response.status_code, response.reason_phrase, response.text[:500])
        detail = body.get("detail", "")
        if not isinstance(detail, str):  # FastAPI's own 422 shape: a list of field errors
            detail = json.dumps(detail, separators=(",", ":"))
        return cls(
            int(body.get("status") or response.status_code),
            str(body.get("title") or response.reason_phrase),
            detail,
            body.get("node_errors"),
            body,
        )


def _error_lines(node_errors: Any, prefix: str) -> list[str]:
    """`node.field: message` lines of a ``node_errors`` mapping."""
    if not isinstance(node_errors, dict):
        return []
    return [
        f"{prefix}{node_id}"
        + (f".{e['field']}" if e.get("field") else "")
        + f": {e.get('message', e)}"
        for node_id, errors in node_errors.items()
        for e in errors
        if isinstance(e, dict)
    ]


def is_job_end(event: dict[str, Any]) -> bool:
    """Whether an event is the job's own terminal status change (the last event of a job)."""
    return (
        event.get("type") == "status"
        and not event.get("node_id")
        and event.get("status") in JOB_TERMINAL
    )


def _checked(response: httpx.Response) -> Any:
    """The decoded body of a 2xx answer (None for 204); :class:`ApiError` otherwise."""
    if response.is_error:
        raise ApiError.from_response(response)
    return None if response.status_code == 204 or not response.content else response.json()


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _submit_request(
    graph: dict[str, Any], wait_s: float | None, idempotency_key: str | None, request_id: str | None
) -> dict[str, Any]:
    # every submission carries a key (a fresh one unless the caller chose one), so a retry
    # after an outage or a lost answer returns the job the first attempt created
    key = idempotency_key or uuid.uuid4().hex
    headers = _params(**{"Idempotency-Key": key, "X-Request-Id": request_id})
    return {
        "json": graph,
        "params": _params(wait=wait_s),
        "headers": headers,
        "timeout": _timeout(wait_s),
    }


def _compose_request(
    intent: str | dict[str, Any], dry_run: bool, wait_s: float | None, request_id: str | None, strict: bool,
    name: str | None = None,
) -> dict[str, Any]:
    return {
        "json": {"intent": intent, "dry_run": dry_run, "strict": strict, **_params(name=name)},
        "params": _params(wait=wait_s),
        "headers": _params(**{"X-Request-Id": request_id, "Idempotency-Key": uuid.uuid4().hex}),
        "timeout": _timeout(wait_s),
    }


def _rerun_request(seed: str) -> dict[str, Any]:
    # a key makes a retry after a lost answer return the re-run the first attempt made
    return {"json": {"seed": seed}, "headers": {"Idempotency-Key": uuid.uuid4().hex}}


def _upload_request(name: str, data: bytes, content_type: str, consent: bool) -> dict[str, Any]:
    # uploads are content-addressed (the same bytes are the same object): repeating one is
    # harmless, which the key tells the retry logic; the server does not read it
    return {"params": {"name": name, "consent": "true" if consent else "false"}, "content": data,
            "headers": {"Content-Type": content_type, "Idempotency-Key": uuid.uuid4().hex}}


def _upload_path(key: str) -> str:
    """``uploads/<user>/<sha256>/<name>`` → its DELETE path (the user is the caller)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "uploads" or not all(parts):
        raise ValueError(f"{key!r} is not an upload key (uploads/<user>/<sha256>/<name>)")
    return f"/uploads/{quote(parts[2], safe='')}/{quote(parts[3], safe='')}"


class _Retries:
    """The I/O-free half of retrying a call: whether an answer or an error earns another
    attempt, and after how long. A call is retried only where repeating it is harmless: an
    idempotent method, a request carrying an Idempotency-Key, or a connection that never
    reached the server."""

    def __init__(self, method: str, headers: dict[str, str] | None, retries: int) -> None:
        self.repeatable = method in _IDEMPOTENT_METHODS or "Idempotency-Key" in (headers or {})
        self.left = retries
        self.attempt = 0

    def after_response(self, response: httpx.Response) -> float | None:
        """The delay before another attempt, or None to keep this answer."""
        if response.status_code not in _RETRY_STATUSES or not self.repeatable or self.left <= 0:
            return None
        return self._next(response.headers.get("Retry-After"))

    def after_error(self, exc: httpx.TransportError) -> float:
        """The delay before another attempt; re-raises when there is none to make."""
        never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        if self.left <= 0 or not (never_sent or self.repeatable):
            raise exc
        return self._next(None)

    def _next(self, retry_after: str | None) -> float:
        self.left -= 1
        self.attempt += 1
        backoff = _BACKOFF_S[min(self.attempt - 1, len(_BACKOFF_S) - 1)]
        try:
            return min(MAX_RETRY_AFTER_S, max(backoff, float(retry_after))) if retry_after else backoff
        except ValueError:  # an HTTP date: not worth parsing for a few seconds
            return backoff


def _timeout(wait_s: float | None) -> float:
    """A server-side wait must not be cut short by the HTTP timeout."""
    return DEFAULT_TIMEOUT_S + (wait_s or 0.0)


def _ws_url(base_url: str, token: str | None) -> str:
    base = base_url.rstrip("/")
    scheme, sep, rest = base.partition("://")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    return f"{ws_scheme}{sep}{rest}/ws?token={quote(token or '', safe='')}"


class _Watch:
    """The I/O-free half of `watch`: what to subscribe with, what a message means, when to stop.

    Messages are yielded as the hub sends them (``snapshot`` on every (re)subscription, then one
    ``update`` per event); ``since`` follows the last event seen so a resubscription resumes
    exactly after it.
    """

    def __init__(self, job_id: str, since: int, max_reconnects: int) -> None:
        self.job_id, self.since, self.max_reconnects = job_id, since, max_reconnects
        self.done = False
        self.failures = 0  # consecutive connection attempts that produced nothing

    def subscribe(self) -> str:
        return json.dumps({"type": "subscribe", "jobId": self.job_id, "since": self.since})

    def handle(self, raw: str | bytes) -> dict[str, Any] | None:
        """The message to yield (None for one that is not for the caller, such as a pong)."""
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "error":
            raise ApiError(
                int(message.get("status") or 400),
                str(message.get("title") or "Error"),
                str(message.get("detail") or message.get("message") or ""),
            )
        if message.get("jobId") not in (None, self.job_id) or kind not in ("snapshot", "update"):
            return None
        self.failures = 0
        if kind == "update":
            event = message.get("event") or {}
            if int(event.get("seq") or 0) <= self.since:
                return None  # already seen before a reconnect
            self.since = int(event["seq"])
            self.done = is_job_end(event)
        else:
            job = message.get("job") or {}
            seq = int(message.get("seq") or job.get("seq") or 0)
            # A finished job whose events are all behind us (or expired) sends nothing more.
            self.done = job.get("status") in JOB_TERMINAL and seq <= self.since
        return message

    def closed(self, exc: Exception) -> float:
        """Decide about a lost connection: the delay before reconnecting, or raise."""
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise ApiError(
                    status,
                    "WebSocket refused",
                    exc.response.body.decode(errors="replace") if exc.response.body else "",
                ) from exc
        if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
            code, reason = exc.rcvd.code, exc.rcvd.reason
            if 4000 <= code < 5000 and code != WS_TOO_SLOW:
                raise ApiError(
                    code - 4000, "WebSocket closed", reason or f"close code {code}"
                ) from exc
        if isinstance(exc, InvalidURI):
            raise exc
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise ApiError(
                503,
                "WebSocket unavailable",
                f"gave up after {self.max_reconnects} reconnects: {exc}",
            ) from exc
        return _BACKOFF_S[min(self.failures - 1, len(_BACKOFF_S) - 1)]


_RECONNECT_ON = (ConnectionClosed, InvalidStatus, OSError, TimeoutError)


class Client:
    """Synchronous client.

    :param base_url: control plane URL, e.g. ``http://127.0.0.1:8000``.
    :param token: the JWT sent as ``Authorization: Bearer``; also the WebSocket's ``?token=``.
    :param timeout_s: HTTP timeout of calls that do not wait on the server.
    :param transport: an httpx transport (tests, proxies); the default network one when None.
    :param retries: further attempts of a call that met an outage (503, a dropped connection),
        made only where repeating it is harmless (submissions carry an Idempotency-Key).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.base_url, self.token = base_url.rstrip("/"), token
        self.retries = retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, client: ClientSettings, **kwargs: Any) -> Self:
        """``DUALPLANE_URL`` and ``DUALPLANE_TOKEN`` (``Settings().client``)."""
        return cls(client.api_url, client.token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        retries = _Retries(method, kwargs.get("headers"), self.retries)
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                time.sleep(retries.after_error(exc))
                continue
            delay = retries.after_response(response)
            if delay is None:
                return _checked(response)
            time.sleep(delay)

    # -- jobs --------------------------------------------------------------------------

    def submit(
        self,
        graph: dict[str, Any],
        *,
        wait_s: float | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Submit a graph; the Job. With ``wait_s`` the server holds the answer until the job
        ends or the wait runs out (then the job as it is; check ``status``)."""
        return self._call(
            "POST", "/jobs", **_submit_request(graph, wait_s, idempotency_key, request_id)
        )

    def submit_batch(self, graphs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._call("POST", "/jobs/batch", json={"graphs": graphs})["jobs"]

    def compose(
        self,
        intent: str | dict[str, Any],
        *,
        dry_run: bool = False,
        wait_s: float | None = None,
        request_id: str | None = None,
        strict: bool = False,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Plan a graph from an intent and submit it (the Job), or only plan it
        (``dry_run``: ``{"brief", "graph", "notes", "song", ...}``). ``strict``: refuse (422)
        a plan that would substitute a part or cannot make one. ``name``: the job's (default:
        from the intent)."""
        return self._call(
            "POST", "/compose", **_compose_request(intent, dry_run, wait_s, request_id, strict, name)
        )

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{quote(job_id, safe='')}")

    def list_jobs(self, **filters: Any) -> dict[str, Any]:
        """One page: ``{"jobs": [summary], "next_cursor"}``. Filters: status, task, user,
        created_after, created_before, limit, cursor."""
        return self._call("GET", "/jobs", params=_params(**filters))

    def iter_jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching job summary, following ``next_cursor`` page by page."""
        while True:
            page = self.list_jobs(**filters)
            yield from page["jobs"]
            if not page.get("next_cursor"):
                return
            filters["cursor"] = page["next_cursor"]

    def events(self, job_id: str, since: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", f"/jobs/{quote(job_id, safe='')}/events", params={"since": since})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/jobs/{quote(job_id, safe='')}/cancel")

    def delete(self, job_id: str) -> None:
        """Delete a finished job (409 while it runs)."""
        self._call("DELETE", f"/jobs/{quote(job_id, safe='')}")

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's artifacts, each with a presigned ``url``."""
        return self._call("GET", f"/jobs/{quote(job_id, safe='')}/artifacts")["artifacts"]

    # -- dead letters (admins) ---------------------------------------------------------

    def dead_letters(self, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """One page, newest first: ``{"dead_letters": [...], "next_cursor"}``."""
        return self._call("GET", "/admin/dead-letters", params=_params(limit=limit, cursor=cursor))

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        """One dead letter with the message it parked."""
        return self._call("GET", f"/admin/dead-letters/{quote(entry_id, safe='')}")

    def replay_dead_letter(self, entry_id: str) -> dict[str, Any]:
        """Put its message back on its stream and make its job runnable again."""
        return self._call("POST", f"/admin/dead-letters/{quote(entry_id, safe='')}/replay")

    def discard_dead_letter(self, entry_id: str) -> None:
        self._call("DELETE", f"/admin/dead-letters/{quote(entry_id, safe='')}")

    # -- names, re-runs, uploads, outputs ----------------------------------------------

    def rename(self, job_id: str, name: str) -> dict[str, Any]:
        return self._call("PATCH", f"/jobs/{quote(job_id, safe='')}", json={"name": name})

    def rerun(self, job_id: str, *, seed: str = "same") -> dict[str, Any]:
        """A new job with the graph of ``job_id``; ``seed="new"``: fresh seeds."""
        return self._call("POST", f"/jobs/{quote(job_id, safe='')}/rerun", **_rerun_request(seed))

    def upload(self, name: str, data: bytes, content_type: str, *, consent: bool = False) -> dict[str, Any]:
        """Store an input file; its record (``key`` for graph params and intents, ``url``...)."""
        return self._call("POST", "/uploads", **_upload_request(name, data, content_type, consent))

    def uploads(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/uploads", params=_params(kind=kind))["uploads"]

    def delete_upload(self, key: str) -> None:
        """Delete one of your uploads by its key (``uploads/<you>/<sha256>/<name>``)."""
        self._call("DELETE", _upload_path(key))

    def outputs(self, **filters: Any) -> dict[str, Any]:
        """One page of the gallery: ``{"outputs": [...], "next_cursor"}``. Filters: kind, limit, cursor."""
        return self._call("GET", "/outputs", params=_params(**filters))

    # -- catalog and preferences -------------------------------------------------------

    def tasks(self) -> list[dict[str, Any]]:
        return self._call("GET", "/tasks")["tasks"]

    def workers(self) -> list[dict[str, Any]]:
        return self._call("GET", "/workers")["workers"]

    def get_preferences(self) -> dict[str, Any]:
        return self._call("GET", "/me/preferences")

    def put_preferences(self, preferences: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", "/me/preferences", json=preferences)

    # -- live updates ------------------------------------------------------------------

    def watch(
        self, job_id: str, *, since: int = 0, max_reconnects: int = DEFAULT_MAX_RECONNECTS
    ) -> Iterator[dict[str, Any]]:
        """Yield the hub's ``snapshot`` and ``update`` messages for a job until its terminal
        status event, resubscribing with ``since=<last seq>`` whenever the connection drops."""
        state = _Watch(job_id, since, max_reconnects)
        url = _ws_url(self.base_url, self.token)
        while not state.done:
            try:
                with ws_connect_sync(url, proxy=None) as ws:
                    ws.send(state.subscribe())
                    for raw in ws:
                        message = state.handle(raw)
                        if message is not None:
                            yield message
                        if state.done:
                            return
                    raise ConnectionClosed(None, None)  # clean close before the end: resume
            except _RECONNECT_ON as exc:
                time.sleep(state.closed(exc))


class AsyncClient:
    """Asynchronous client; same methods as :class:`Client`, awaited.

    :param base_url: control plane URL, e.g. ``http://127.0.0.1:8000``.
    :param token: the JWT sent as ``Authorization: Bearer``; also the WebSocket's ``?token=``.
    :param timeout_s: HTTP timeout of calls that do not wait on the server.
    :param transport: an httpx transport (tests, proxies); the default network one when None.
    :param retries: as for :class:`Client`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.base_url, self.token = base_url.rstrip("/"), token
        self.retries = retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, client: ClientSettings, **kwargs: Any) -> Self:
        return cls(client.api_url, client.token, **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        retries = _Retries(method, kwargs.get("headers"), self.retries)
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                await asyncio.sleep(retries.after_error(exc))
                continue
            delay = retries.after_response(response)
            if delay is None:
                return _checked(response)
            await asyncio.sleep(delay)

    async def submit(
        self,
        graph: dict[str, Any],
        *,
        wait_s: float | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        return await self._call(
            "POST", "/jobs", **_submit_request(graph, wait_s, idempotency_key, request_id)
        )

    async def submit_batch(self, graphs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return (await self._call("POST", "/jobs/batch", json={"graphs": graphs}))["jobs"]

    async def compose(
        self,
        intent: str | dict[str, Any],
        *,
        dry_run: bool = False,
        wait_s: float | None = None,
        request_id: str | None = None,
        strict: bool = False,
        name: str | None = None,
    ) -> dict[str, Any]:
        return await self._call(
            "POST", "/compose", **_compose_request(intent, dry_run, wait_s, request_id, strict, name)
        )

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/jobs/{quote(job_id, safe='')}")

    async def list_jobs(self, **filters: Any) -> dict[str, Any]:
        return await self._call("GET", "/jobs", params=_params(**filters))

    async def iter_jobs(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        while True:
            page = await self.list_jobs(**filters)
            for summary in page["jobs"]:
                yield summary
            if not page.get("next_cursor"):
                return
            filters["cursor"] = page["next_cursor"]

    async def events(self, job_id: str, since: int = 0) -> list[dict[str, Any]]:
        return await self._call(
            "GET", f"/jobs/{quote(job_id, safe='')}/events", params={"since": since}
        )

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/jobs/{quote(job_id, safe='')}/cancel")

    async def delete(self, job_id: str) -> None:
        await self._call("DELETE", f"/jobs/{quote(job_id, safe='')}")

    async def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return (await self._call("GET", f"/jobs/{quote(job_id, safe='')}/artifacts"))["artifacts"]

    async def dead_letters(self, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        return await self._call("GET", "/admin/dead-letters", params=_params(limit=limit, cursor=cursor))

    async def dead_letter(self, entry_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/admin/dead-letters/{quote(entry_id, safe='')}")

    async def replay_dead_letter(self, entry_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/admin/dead-letters/{quote(entry_id, safe='')}/replay")

    async def discard_dead_letter(self, entry_id: str) -> None:
        await self._call("DELETE", f"/admin/dead-letters/{quote(entry_id, safe='')}")

    async def rename(self, job_id: str, name: str) -> dict[str, Any]:
        return await self._call("PATCH", f"/jobs/{quote(job_id, safe='')}", json={"name": name})

    async def rerun(self, job_id: str, *, seed: str = "same") -> dict[str, Any]:
        return await self._call("POST", f"/jobs/{quote(job_id, safe='')}/rerun", **_rerun_request(seed))

    async def upload(self, name: str, data: bytes, content_type: str, *, consent: bool = False) -> dict[str, Any]:
        return await self._call("POST", "/uploads", **_upload_request(name, data, content_type, consent))

    async def uploads(self, kind: str | None = None) -> list[dict[str, Any]]:
        return (await self._call("GET", "/uploads", params=_params(kind=kind)))["uploads"]

    async def delete_upload(self, key: str) -> None:
        await self._call("DELETE", _upload_path(key))

    async def outputs(self, **filters: Any) -> dict[str, Any]:
        return await self._call("GET", "/outputs", params=_params(**filters))

    async def tasks(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/tasks"))["tasks"]

    async def workers(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/workers"))["workers"]

    async def get_preferences(self) -> dict[str, Any]:
        return await self._call("GET", "/me/preferences")

    async def put_preferences(self, preferences: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PUT", "/me/preferences", json=preferences)

    async def watch(
        self, job_id: str, *, since: int = 0, max_reconnects: int = DEFAULT_MAX_RECONNECTS
    ) -> AsyncIterator[dict[str, Any]]:
        """Like :meth:`Client.watch`, as an async generator."""
        state = _Watch(job_id, since, max_reconnects)
        url = _ws_url(self.base_url, self.token)
        while not state.done:
            try:
                async with ws_connect(url, proxy=None) as ws:
                    await ws.send(state.subscribe())
                    async for raw in ws:
                        message = state.handle(raw)
                        if message is not None:
                            yield message
                        if state.done:
                            return
                    raise ConnectionClosed(None, None)
            except _RECONNECT_ON as exc:
                await asyncio.sleep(state.closed(exc))
