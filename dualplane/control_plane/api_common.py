"""What every route module of the API shares: the caller (``User``), the error shape
(``problem``) and the query types several routes take. It sits below ``app`` and the
``routes_*`` modules, so they import it and never each other."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.responses import JSONResponse

from dualplane.common.errors import DualplaneError
from dualplane.control_plane.auth import Authenticator, Principal, bearer_token
from dualplane.control_plane.limits import MAX_TIMESTAMP

PROBLEM = "application/problem+json"
#: ``?wait=`` is clamped to ``max_wait_s``; only a number no clock can reach is refused.
WaitQuery = Annotated[float | None, Query(ge=0, le=7 * 24 * 3600, allow_inf_nan=False)]
Timestamp = Annotated[float | None, Query(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]


async def current_principal(request: Request,
                            authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from its bearer token (401 when missing or invalid)."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(bearer_token(authorization))


User = Annotated[Principal, Depends(current_principal)]


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
