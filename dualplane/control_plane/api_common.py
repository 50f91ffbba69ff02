"""The one dependency module of the API: what every route module shares.

* The caller (``User``) and what the app holds, as FastAPI dependencies read from
  ``request.app.state`` (``create_app`` fills it): the plane (``Plane``), the request limits
  (``RequestLimits``), the settings (``AppSettings``) and the hub (``AppHub``). Routes take
  them as parameters rather than from a closure, so each route module is a plain ``APIRouter``.
* The error shape (``problem``, ``problem_of``) and the query types several routes take.
* The steps several routes take: the caller's job (``owned_job``) and the answer to a
  submission (``job_response``).

It sits below ``app`` and the ``routes_*`` modules, so they import it and never each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import pydantic
from fastapi import Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter

from dualplane.common.errors import DualplaneError, UnknownJob
from dualplane.common.models import Job
from dualplane.common.settings import Settings
from dualplane.control_plane.auth import Authenticator, Principal, bearer_token
from dualplane.control_plane.hub import Hub
from dualplane.control_plane.limits import MAX_TIMESTAMP, Limits, valid_job_id
from dualplane.control_plane.service import FINISHED, ControlPlane

PROBLEM = "application/problem+json"
T = TypeVar("T")
#: ``?wait=`` is clamped to ``max_wait_s``; only a number no clock can reach is refused.
WaitQuery = Annotated[float | None, Query(ge=0, le=7 * 24 * 3600, allow_inf_nan=False)]
Timestamp = Annotated[float | None, Query(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]
#: An ``Idempotency-Key`` header: a retry with the same key gets the job the first attempt made.
IdempotencyKey = Annotated[str | None, Header(max_length=200)]


async def current_principal(request: Request,
                            authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from its bearer token (401 when missing or invalid)."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(bearer_token(authorization))


def plane_of(request: Request) -> ControlPlane:
    control: ControlPlane = request.app.state.control
    return control


def limits_of(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _awaited(read: Callable[[Request], T]) -> Callable[[Request], Awaitable[T]]:
    """``read`` as an ``async def`` dependency: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop per request for an attribute read."""
    async def dependency(request: Request) -> T:
        return read(request)

    return dependency


User = Annotated[Principal, Depends(current_principal)]
Plane = Annotated[ControlPlane, Depends(_awaited(plane_of))]
RequestLimits = Annotated[Limits, Depends(_awaited(limits_of))]
AppSettings = Annotated[Settings, Depends(_awaited(settings_of))]
AppHub = Annotated[Hub, Depends(_awaited(hub_of))]


_WAIT = TypeAdapter(WaitQuery)
_IDEMPOTENCY_KEY = TypeAdapter(IdempotencyKey)
#: The parameters :func:`submission` reads, documented as FastAPI documents them for a route that
#: declares them (``openapi_extra={"parameters": SUBMISSION_PARAMETERS}``).
SUBMISSION_PARAMETERS = [
    {"name": "wait", "in": "query", "required": False, "schema": {**_WAIT.json_schema(), "title": "Wait"}},
    {"name": "idempotency-key", "in": "header", "required": False,
     "schema": {**_IDEMPOTENCY_KEY.json_schema(), "title": "Idempotency-Key"}},
    {"name": "authorization", "in": "header", "required": False,
     "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Authorization"}},
]


async def submission(request: Request) -> tuple[Principal, float | None, str | None]:
    """The caller, ``?wait=`` and ``Idempotency-Key`` of a submission, as ``User``, ``WaitQuery``
    and ``IdempotencyKey`` parameters give them (401 first, then one 422 with every bad value),
    without FastAPI's per-request dependency solving: the hot route reads them itself."""
    who = await current_principal(request, request.headers.get("authorization"))
    errors: list[dict[str, Any]] = []
    wait = _parameter(_WAIT, request.query_params.get("wait"), ("query", "wait"), errors)
    key = _parameter(_IDEMPOTENCY_KEY, request.headers.get("idempotency-key"), ("header", "idempotency-key"), errors)
    if errors:
        raise RequestValidationError(errors)
    return who, wait, key


def _parameter(adapter: TypeAdapter[Any], value: str | None, loc: tuple[str, str], errors: list[dict[str, Any]]) -> Any:
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        errors.extend({**e, "loc": (*loc, *e["loc"])} for e in exc.errors(include_url=False))
        return None


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    """The one error shape of the API (RFC 9457)."""
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
                        status_code=status, media_type=PROBLEM, headers=headers)


def problem_of(exc: DualplaneError, **extra: Any) -> JSONResponse:
    """The problem ``exc`` stands for (its class's status and title, its detail, fields and
    headers); ``extra`` adds members where a route knows more (a batch's index)."""
    return problem(exc.status, exc.title, exc.problem_detail(), headers=exc.problem_headers() or None,
                   **exc.problem_fields(), **extra)


async def owned_job(control: ControlPlane, job_id: str, who: Principal) -> Job:
    """The job, when ``who`` may see it; :class:`UnknownJob` (404) otherwise, so ids do not leak.

    Called inside the routes rather than as a dependency: a dependency runs before the route's
    query parameters are validated, which would turn a bad query on a missing job into a 404."""
    if not valid_job_id(job_id):  # no such job can exist, and the id must not reach a key
        raise UnknownJob(job_id)
    job = await control.get_job(job_id)
    if not who.can_access(job.user):
        raise UnknownJob(job_id)
    return job


async def job_response(request: Request, job_id: str, *, created: bool, wait: float | None, user: str,
                       job: Job | None = None) -> Response:
    """The answer to a submission: the job (201 new, 200 known), or with ``wait`` the job once it
    finished (200) or when the wait ran out (202), the wait clamped to ``max_wait_s``. ``job``:
    the new job as stored, when the submission made it (answered without reading it back)."""
    control = plane_of(request)
    status_code = 201 if created else 200
    if wait:
        await hub_of(request).waits.wait(job_id, user, min(wait, settings_of(request).max_wait_s))
        job = await control.get_job(job_id)
        status_code = 200 if job.status in FINISHED else 202
    elif job is None:
        job = await control.get_job(job_id)
    return Response(job.model_dump_json(), status_code=status_code, media_type="application/json",
                    headers={"Location": f"/jobs/{job_id}"})
