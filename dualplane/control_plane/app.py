"""HTTP shell of the control plane (FastAPI): builds the app and nothing else.

``create_app`` makes the :class:`ControlPlane` (unless given one), its lifespan, the middleware
(body cap, request id), the one handler of the error tree, the WebSocket hub, and includes the
routers; the routes live in ``routes_*`` by subject and take what they need from
:mod:`.api_common` (the caller, the plane, the limits, the settings, the hub, all on
``app.state``).

Every user-facing endpoint needs a bearer JWT (see :mod:`.auth`); users see only their
own jobs (another user's job is a 404, never a 403, so ids do not leak). Every error is
``application/problem+json``: a :class:`~dualplane.common.errors.DualplaneError` carries its
status, title and fields; graph errors carry ``node_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from dualplane.common.errors import DualplaneError, Unavailable
from dualplane.common.settings import Settings
from dualplane.control_plane import (
    routes_admin,
    routes_catalog,
    routes_compose,
    routes_health,
    routes_jobs,
    routes_outputs,
    routes_preferences,
    routes_seed,
    routes_uploads,
)
from dualplane.control_plane.api_common import problem, problem_of
from dualplane.control_plane.api_docs import document_bodies, mount_api_docs
from dualplane.control_plane.auth import Authenticator
from dualplane.control_plane.body_limit import BodyLimit
from dualplane.control_plane.hub import Hub, add_websocket_route
from dualplane.control_plane.limits import Limits
from dualplane.control_plane.request_id import RequestId
from dualplane.control_plane.routes_auth import install_accounts
from dualplane.control_plane.service import ControlPlane
from dualplane.control_plane.ui import mount_ui

log = logging.getLogger("dualplane.api")

#: The routers, in the order their routes are matched and documented.
ROUTERS = (routes_jobs, routes_compose, routes_catalog, routes_preferences, routes_health, routes_uploads,
           routes_outputs, routes_seed, routes_admin)


def create_app(settings: Settings, *, plane: ControlPlane | None = None,
               authenticator: Authenticator | None = None) -> FastAPI:
    """Build the app; the control plane starts and stops with the app's lifespan (unless
    it was passed in already started)."""
    control = plane or ControlPlane(settings, metrics_registry=CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if plane is None:
            await control.start()
        await app.state.hub.start()
        try:
            yield
        finally:
            await app.state.hub.stop()
            if plane is None:
                await control.stop(settings.shutdown_grace_s)

    app = FastAPI(title="dualplane control plane", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Submit generative-media job graphs, follow them live, fetch their artifacts.")
    mount_api_docs(app)  # /docs from local assets: it works offline
    # what api_common's dependencies hand the routes
    app.state.settings = settings
    app.state.control = control
    app.state.authenticator = authenticator or Authenticator.from_settings(settings.auth)
    app.state.limits = Limits.from_settings(settings.limits)
    # before the request-id middleware, so that it is inside it and its 413s carry the id
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       route_caps={("POST", "/uploads"): settings.max_upload_bytes})
    _install_error_handlers(app)
    _install_request_id(app)
    _install_hub(app, control, settings)
    for module in ROUTERS:
        app.include_router(module.router)
    install_accounts(app, control, app.state.authenticator, settings.auth)  # /auth/*; revoked tokens refused
    mount_ui(app)
    document_bodies(app)
    return app


def _install_hub(app: FastAPI, control: ControlPlane, settings: Settings) -> None:
    hub = Hub(control.bridge, buffer_messages=settings.hub_buffer_messages,
              max_waits_per_user=settings.max_waits_per_user)
    app.state.hub = hub
    control.hub_metrics.hub = hub  # read at scrape time (hub.connections, hub.stats)
    add_websocket_route(app, hub, app.state.authenticator)


def _install_error_handlers(app: FastAPI) -> None:
    async def _dualplane_error(request: Request, exc: Exception) -> JSONResponse:
        # a 500 is a bug or an internal fault (a Redis error the bridge could not call transient
        # among them): the server answers and logs it
        if not isinstance(exc, DualplaneError) or exc.status == 500:
            raise exc
        if isinstance(exc, Unavailable):
            log.warning("%s %s: service unavailable: %s", request.method, request.url.path, exc)
        return problem_of(exc)

    app.add_exception_handler(DualplaneError, _dualplane_error)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return problem(422, "Invalid request", errors[0]["message"] if errors else "invalid request",
                       errors=orjson.loads(orjson.dumps(errors, default=str)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=getattr(exc, "headers", None))


def _install_request_id(app: FastAPI) -> None:
    """The request id (``request_id.RequestId``): outside BodyLimit, so its 413s carry the id."""
    app.add_middleware(RequestId)
