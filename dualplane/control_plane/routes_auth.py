"""The accounts routes: ``POST /auth/login``, ``/auth/refresh``, ``/auth/logout`` (no bearer
token needed), and the wiring that makes every token check honour account revocations.

Contract (the UI's login form is built to it): login ``{"username", "password"}`` and refresh
``{"refresh_token"}`` answer ``200 {"access_token", "refresh_token", "token_type": "bearer",
"expires_in", "user", "role"}``; a bad name or password, a disabled account, or a refresh token
that is expired, revoked or spent is a ``401`` problem; too many failed logins a ``429`` with
``Retry-After``. ``logout {"refresh_token"}`` ends that session: ``204`` whatever it was. The
access token is an ordinary bearer JWT; the refresh token rotates at every refresh (keep only
the last one, and refresh once at a time: a spent one presented again revokes the account).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import pydantic
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.settings import AuthSettings
from dualplane.control_plane.accounts import MAX_PASSWORD_LENGTH, Account, AccountStore, RevocationView
from dualplane.control_plane.auth import Authenticator, AuthError
from dualplane.control_plane.limits import Limits
from dualplane.control_plane.login_limit import LoginLimiter
from dualplane.control_plane.service import ControlPlane

#: Login bodies are small: a name, a password.
MAX_AUTH_BODY_BYTES = 4096
M = TypeVar("M", bound=BaseModel)


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Annotated[str, Field(min_length=1, max_length=128, examples=["alice"])]
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: Annotated[str, Field(min_length=1, max_length=256)]


class TokenResponse(BaseModel):
    access_token: str = Field(description="A bearer JWT, accepted wherever tokens are.")
    refresh_token: str = Field(description="Opaque; spent by its next use, which returns the next one.")
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")
    user: str
    role: str


def install_accounts(app: FastAPI, control: ControlPlane, authenticator: Authenticator, auth: AuthSettings) -> None:
    """Mount the /auth routes and make ``authenticator`` consult the accounts' revocations."""
    store = AccountStore(control.bridge, refresh_ttl_s=auth.refresh_token_ttl_s)
    authenticator.revocations = RevocationView(control.bridge, check_s=auth.revocation_check_s)
    limiter = LoginLimiter(control.bridge, per_user=auth.login_failures_per_user,
                           per_ip=auth.login_failures_per_ip, window_s=auth.login_window_s)
    app.include_router(_router(store, authenticator, limiter, auth))


def _router(store: AccountStore, authenticator: Authenticator, limiter: LoginLimiter, auth: AuthSettings
            ) -> APIRouter:
    router = APIRouter(prefix="/auth", tags=["auth"])
    limits = Limits(max_body_bytes=MAX_AUTH_BODY_BYTES)

    def tokens(account: Account, refresh_token: str) -> JSONResponse:
        access = authenticator.mint(account.name, account.role, ttl_s=auth.access_token_ttl_s,
                                    generation=account.generation)
        body = TokenResponse(access_token=access, refresh_token=refresh_token,
                             expires_in=auth.access_token_ttl_s, user=account.name, role=account.role)
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})  # RFC 6749 5.1

    @router.post("/login", response_model=TokenResponse, openapi_extra=_body(LoginRequest), responses={
        401: {"description": "Wrong name or password, or a disabled account"},
        429: {"description": "Too many failed logins for this account or from this address"}})
    async def login(request: Request) -> JSONResponse:
        """Sign in with a name and password: an access token and a refresh token."""
        body = _parse(LoginRequest, await limits.read_json(request))
        attempt = await limiter.attempt(body.username, request.client.host if request.client else None)
        account = await store.check_password(body.username, body.password)
        if account is None:
            raise AuthError("invalid username or password")
        if account.disabled:  # said only to whoever knows the password
            raise AuthError("account disabled")
        await attempt.succeeded()
        return tokens(account, await store.open_session(account))

    @router.post("/refresh", response_model=TokenResponse, openapi_extra=_body(RefreshRequest), responses={
        401: {"description": "Refresh token malformed, expired, revoked, or spent (which revokes the account)"}})
    async def refresh(request: Request) -> JSONResponse:
        """Trade a refresh token for a new access token and the next refresh token."""
        body = _parse(RefreshRequest, await limits.read_json(request))
        account, refresh_token = await store.rotate_session(body.refresh_token)
        return tokens(account, refresh_token)

    @router.post("/logout", status_code=204, openapi_extra=_body(RefreshRequest))
    async def logout(request: Request) -> Response:
        """End the session of a refresh token (its access tokens run out on their own)."""
        body = _parse(RefreshRequest, await limits.read_json(request))
        await store.close_session(body.refresh_token)
        return Response(status_code=204)

    return router


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The routes read their body themselves (size and depth caps); the docs still show it."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _parse(model: type[M], document: Any) -> M:
    """The body as ``model``, with FastAPI's own 422 when it does not fit."""
    try:
        return model.model_validate(document)
    except pydantic.ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from None
