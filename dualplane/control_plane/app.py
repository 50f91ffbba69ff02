"""HTTP shell of the control plane (FastAPI).

Every user-facing endpoint needs a bearer JWT (see :mod:`.auth`); users see only their
own jobs (another user's job is a 404, never a 403, so ids do not leak). Every error is
``application/problem+json``; graph errors carry ``node_errors``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import redis
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from dualplane.common import logs
from dualplane.common.errors import DualplaneError, GraphValidationError, Unavailable, UnknownJob
from dualplane.common.models import CapabilityManifest, Event, Graph, Job
from dualplane.common.settings import Settings
from dualplane.control_plane.api_common import Timestamp, User, WaitQuery, problem, problem_of
from dualplane.control_plane.api_docs import mount_api_docs
from dualplane.control_plane.auth import USER_ID_PATTERN, Authenticator, Forbidden, Principal
from dualplane.control_plane.body_limit import BodyLimit
from dualplane.control_plane.compose_api import ComposeRequest, compose_request, plan_or_problem
from dualplane.control_plane.limits import MAX_SEQ, Limits, TooDeep, valid_job_id
from dualplane.control_plane.listing import JobFilter, list_jobs
from dualplane.control_plane.policy import PolicyRefusal, intent_texts
from dualplane.control_plane.routes_admin import admin_router
from dualplane.control_plane.routes_auth import install_accounts
from dualplane.control_plane.routes_jobs import jobs_router
from dualplane.control_plane.routes_seed import seed_router
from dualplane.control_plane.routes_uploads import uploads_router
from dualplane.control_plane.service import FINISHED, ControlPlane
from dualplane.control_plane.ui import mount_ui

log = logging.getLogger("dualplane.api")

REQUEST_ID_HEADER = "X-Request-Id"
#: Largest preferences document kept per user.
MAX_PREFERENCES_BYTES = 16 * 1024

_GRAPH_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Graph"}}}}}
_COMPOSE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ComposeRequest"}}}}}
def create_app(settings: Settings, *, plane: ControlPlane | None = None,
               authenticator: Authenticator | None = None) -> FastAPI:
    """Build the app; the control plane starts and stops with the app's lifespan (unless
    it was passed in already started)."""
    control = plane or ControlPlane(settings, metrics_registry=CollectorRegistry())
    auth = authenticator or Authenticator.from_settings(settings)
    limits = Limits.from_settings(settings)

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
    app.state.control = control
    app.state.authenticator = auth
    # before the request-id middleware, so that it is inside it and its 413s carry the id
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       route_caps={("POST", "/uploads"): settings.max_upload_bytes})
    _install_error_handlers(app)
    _install_request_id(app)
    _install_hub(app, control, auth, settings)

    async def owned_job(job_id: str, who: Principal) -> Job:
        if not valid_job_id(job_id):  # no such job can exist, and the id must not reach a key
            raise UnknownJob(job_id)
        job = await control.get_job(job_id)
        if not who.can_access(job.user):
            raise UnknownJob(job_id)
        return job

    @app.post("/jobs", status_code=201, response_model=Job, openapi_extra=_GRAPH_BODY, responses={
        200: {"description": "Same id or Idempotency-Key as an existing job of yours, or finished within `wait`"},
        202: {"description": "`wait` elapsed first; the job as it is now"}, 409: {"description": "Id taken"},
        413: {"description": "Body too large"}, 422: {"description": "Invalid graph (`node_errors`)"},
        429: {"description": "Submission rate limit"}})
    async def submit_job(request: Request, who: User, wait: WaitQuery = None,
                         idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Response:
        """Submit a graph. `?wait=<seconds>` returns the finished job when it ends in time."""
        document = await limits.read_graph(request)
        limits.check_graph(document)
        await limits.admit(control.bridge, who.user)
        graph = control.validate(document)
        decision = await control.screen(graph, user=who.user, stage="submit", request_id=request.state.request_id)
        result = await control.submit(graph, request_id=request.state.request_id, user=who.user,
                                      idempotency_key=idempotency_key, audit=decision)
        return await _job_response(result.job_id, created=result.created, wait=wait, user=who.user)

    @app.post("/jobs/batch", status_code=201, responses={422: {"description": "An invalid graph (by index)"}})
    async def submit_batch(request: Request, who: User) -> JSONResponse:
        """Submit many graphs at once; all are validated before any is queued."""
        try:
            body = await limits.read_json(request)
        except TooDeep as exc:
            return _deep_batch(exc)
        graphs = body.get("graphs") if isinstance(body, dict) else None
        if not isinstance(graphs, list) or not graphs:
            return problem(422, "Invalid batch", "body must be {\"graphs\": [graph, ...]} with at least one graph")
        errors: dict[str, Any] = {}
        parsed = []
        for index, document in enumerate(graphs):
            try:
                limits.check_graph(document)
                parsed.append(control.validate(document))
            except GraphValidationError as exc:
                errors[str(index)] = exc.node_errors
        if errors:
            return problem(422, "Invalid graph in batch", f"{len(errors)} of {len(graphs)} graphs are invalid",
                           errors=errors)
        await limits.admit(control.bridge, who.user, amount=len(parsed))
        decisions = []
        for index, graph in enumerate(parsed):  # all judged before any is queued, like the validation
            try:
                decisions.append(await control.screen(graph, user=who.user, stage="submit",
                                                      request_id=request.state.request_id))
            except PolicyRefusal as exc:
                return problem_of(exc, index=index)
        jobs = []
        for graph, decision in zip(parsed, decisions, strict=True):
            result = await control.submit(graph, request_id=request.state.request_id, user=who.user, audit=decision)
            jobs.append((await control.get_job(result.job_id)).model_dump(mode="json"))
        return JSONResponse({"jobs": jobs}, status_code=201)

    @app.get("/jobs")
    async def jobs(who: User, status: Annotated[list[str] | None, Query()] = None,
                   task: Annotated[str | None, Query(max_length=128)] = None,
                   user: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
                   created_after: Timestamp = None, created_before: Timestamp = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   cursor: Annotated[str | None, Query(max_length=256)] = None) -> dict[str, Any]:
        """Your jobs, newest first (admins: anyone's, `user=` to narrow). Follow `next_cursor`."""
        if user is not None and user != who.user and not who.privileged:
            raise Forbidden("only admins and orchestrators can list other users' jobs")
        owner = user if (user is not None or not who.privileged) else None
        flt = JobFilter(user=owner or (None if who.privileged else who.user), statuses=frozenset(status or ()),
                        task=task, created_after=created_after, created_before=created_before)
        page = await list_jobs(control.bridge, flt, limit=limit, cursor=cursor)
        return {"jobs": page.jobs, "next_cursor": page.next_cursor}

    @app.get("/jobs/{job_id}", response_model=Job)
    async def get_job(job_id: str, who: User) -> Job:
        """Job status, progress and every node's state."""
        return await owned_job(job_id, who)

    @app.get("/jobs/{job_id}/events", response_model=list[Event])
    async def job_events(job_id: str, who: User, since: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
                         limit: Annotated[int | None, Query(ge=1, le=10_000)] = None) -> list[Event]:
        """Events with seq > since, in order (the durable event stream)."""
        await owned_job(job_id, who)
        return await control.bridge.events(job_id, since, count=limit)

    @app.post("/jobs/{job_id}/cancel", status_code=202)
    async def cancel_job(job_id: str, who: User) -> dict[str, str]:
        """Ask the owning plane to cancel; running tasks stop at their next step."""
        await owned_job(job_id, who)
        return {"id": job_id, "status": await control.cancel(job_id)}

    @app.delete("/jobs/{job_id}", status_code=204, responses={409: {"description": "Job not finished"}})
    async def purge_job(job_id: str, who: User) -> Response:
        """Delete a finished job, its events and its artifacts."""
        await owned_job(job_id, who)
        await control.purge(job_id)
        return Response(status_code=204)

    @app.get("/jobs/{job_id}/artifacts")
    async def job_artifacts(job_id: str, who: User,
                            expires_s: Annotated[int, Query(ge=60, le=7 * 24 * 3600)] = 3600) -> dict[str, Any]:
        """Every artifact of the job with a presigned GET URL."""
        job = await owned_job(job_id, who)
        return {"artifacts": await control.artifact_links(job, expires_s)}

    @app.post("/compose", status_code=201, openapi_extra=_COMPOSE_BODY, responses={
        200: {"description": "dry_run: the brief, the planned graph and its notes; or the finished job within "
                            "`wait`"},
        202: {"description": "`wait` elapsed first"}, 413: {"description": "Body too large"},
        422: {"description": "Invalid intent"}})
    async def compose(request: Request, who: User, wait: WaitQuery = None,
                      idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Response:
        """Plan a graph from intent (free text or structured) and submit it; `dry_run` only plans."""
        body = compose_request(await limits.read_json(request))
        plan = await plan_or_problem(control.planner, body)
        if isinstance(plan, Response):
            return plan
        decision = await control.screen(control.validate(plan.graph), user=who.user, stage="compose", goal=plan.goal,
                                        texts=intent_texts(body.intent, body.brief),
                                        request_id=request.state.request_id)
        if body.dry_run:
            return JSONResponse(plan.model_dump(mode="json"))
        limits.check_graph(plan.graph)
        await limits.admit(control.bridge, who.user)
        # the key names the request, not the plan: a retry gets the job the first attempt made
        result = await control.submit(plan.graph, request_id=request.state.request_id, user=who.user,
                                      idempotency_key=_compose_key(idempotency_key), audit=decision)
        return await _job_response(result.job_id, created=result.created, wait=wait, user=who.user)

    @app.get("/tasks")
    async def tasks(who: User) -> dict[str, Any]:
        """The task catalog: plane, description, GPU need and params JSON Schema of every task."""
        return {"tasks": control.task_catalog()}

    @app.get("/workers")
    async def workers(who: User) -> dict[str, Any]:
        """Live workers (capability key not expired) with their manifests."""
        manifests = [CapabilityManifest.model_validate_json(raw) for raw in await control.bridge.live_workers()]
        return {"workers": [m.model_dump(mode="json") for m in sorted(manifests, key=lambda m: m.worker_id)]}

    @app.get("/me/preferences")
    async def get_preferences(who: User) -> dict[str, Any]:
        """Your saved preferences (e.g. the last generator and its options)."""
        return await control.bridge.get_preferences(who.user)

    @app.put("/me/preferences", responses={413: {"description": "Preferences too large"}})
    async def put_preferences(request: Request, who: User) -> dict[str, Any]:
        """Replace your preferences with a JSON object."""
        document = await limits.read_json(request, max_bytes=MAX_PREFERENCES_BYTES)
        if not isinstance(document, dict):
            return problem(422, "Invalid preferences", "preferences must be a JSON object")
        await control.bridge.put_preferences(who.user, document)
        return document

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """The process answers (a liveness probe): a consume loop that dies ends the process
        itself, and a Redis or store outage is /health's business, not a reason to restart."""
        return {"status": "alive"}

    @app.get("/health")
    async def health() -> JSONResponse:
        """Without Redis the plane can do nothing (503). Without the object store it still takes,
        runs, reports and cancels jobs, and only uploads and artifact links fail (503 each): 200
        "degraded", so that a load balancer or a liveness probe does not make a partial outage
        whole."""
        ok = await control.bridge.ping()
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "redis": ok}
        runner = control.runner.health()
        if not runner["ok"]:  # connected, yet control nodes are not being run
            ok = False
            body.update(status="unavailable", consumer=runner["error"])
        if control.artifacts is not None:
            body["object_store"] = await control.artifacts.available()
            if ok and not body["object_store"]:
                body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        await control.queue_metrics.refresh()  # Redis reads are async; collect() only reads the snapshot
        control.metrics.busy.set(control.runner.busy)
        control.metrics.running_nodes.set(control.executor.running_nodes)
        return Response(generate_latest(control.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _job_response(job_id: str, *, created: bool, wait: float | None, user: str) -> Response:
        status_code = 201 if created else 200
        if wait:
            await app.state.hub.waits.wait(job_id, user, min(wait, settings.max_wait_s))
            job = await control.get_job(job_id)
            status_code = 200 if job.status in FINISHED else 202
        else:
            job = await control.get_job(job_id)
        return Response(job.model_dump_json(), status_code=status_code, media_type="application/json",
                        headers={"Location": f"/jobs/{job_id}"})

    app.state.owned_job = owned_job
    _include_routers(app, control, limits, settings)
    mount_ui(app, settings)
    _document_graph_body(app)
    return app


def _include_routers(app: FastAPI, control: ControlPlane, limits: Limits, settings: Settings) -> None:
    """Route groups that live in their own modules."""
    app.include_router(uploads_router(control, limits, settings))
    app.include_router(jobs_router(control, limits, app.state.owned_job))  # rename, rerun, /outputs
    app.include_router(seed_router(control, limits, settings, app.state.hub))  # /generate, /job, external nodes
    app.include_router(admin_router(control))  # /admin/dead-letters, /admin/audit (admins only)
    install_accounts(app, control, app.state.authenticator, settings)  # /auth/*; revoked tokens refused


def _compose_key(idempotency_key: str | None) -> str | None:
    """Compose keys live apart from submit keys: the same key on both is two requests."""
    return f"compose:{idempotency_key}" if idempotency_key else None


def _document_graph_body(app: FastAPI) -> None:
    """The graph routes and /compose read their body themselves (size and depth caps,
    node-scoped errors), so the OpenAPI document gets their schemas here: the Graph schema and
    its example from the shared JSON Schema, and ComposeRequest's from its model."""
    import fastapi.openapi.utils

    # no `$ref` params in the example: OpenAPI tools read any "$ref" key as a JSON reference
    example = {"nodes": [{"id": "beat", "task": "noop", "plane": "python", "params": {"value": "hello"}},
                         {"id": "join", "task": "collect", "plane": "control", "needs": ["beat"]}]}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = fastapi.openapi.utils.get_openapi(title=app.title, version=app.version,
                                                       description=app.description, routes=app.routes)
            graph = Graph.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in graph.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["Graph"] = {**graph, "examples": [example]}
            _add_component(components, ComposeRequest)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_component(components: dict[str, Any], model: type[BaseModel]) -> None:
    definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, nested in definition.pop("$defs", {}).items():
        components.setdefault(name, nested)
    components[model.__name__] = definition


def _deep_batch(exc: TooDeep) -> JSONResponse:
    """A batch nested too deep: by graph index (node-scoped) when the deep part is in a graph."""
    path = exc.spot.path if exc.spot else ()
    if len(path) >= 2 and path[0] == "graphs" and isinstance(path[1], int):
        return problem(422, "Invalid graph in batch", f"graph {path[1]} is invalid",
                       errors={str(path[1]): exc.node_errors(skip=2)})
    return problem(422, "Invalid batch", str(exc))


def _install_hub(app: FastAPI, control: ControlPlane, auth: Authenticator, settings: Settings) -> None:
    from dualplane.control_plane.hub import Hub, add_websocket_route

    async def job_user(job_id: str) -> str | None:
        (user,) = await control.bridge.job_fields(job_id, "user")
        return user  # type: ignore[return-value]

    hub = Hub(control.bridge, job_user=job_user, buffer_messages=settings.hub_buffer_messages,
              max_waits_per_user=settings.max_waits_per_user)
    app.state.hub = hub
    control.hub_metrics.hub = hub  # read at scrape time (hub.connections, hub.stats)
    add_websocket_route(app, hub, auth)


#: Redis errors that mean "not now" rather than "never": a dropped or refused connection, an
#: exhausted pool, a server still loading its data or a replica that was not promoted yet.
_REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                      redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError)


def _install_error_handlers(app: FastAPI) -> None:
    async def _dualplane_error(request: Request, exc: Exception) -> JSONResponse:
        error = exc if isinstance(exc, DualplaneError) else Unavailable(str(exc))  # a Redis error
        if error.status == 500:  # a bug or an internal fault: the server answers and logs it
            raise exc
        if isinstance(error, Unavailable):
            log.warning("%s %s: service unavailable: %s", request.method, request.url.path, exc)
        return problem_of(error)

    app.add_exception_handler(DualplaneError, _dualplane_error)
    for error_type in _REDIS_UNAVAILABLE:  # until the bridge translates them into Unavailable
        app.add_exception_handler(error_type, _dualplane_error)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return problem(422, "Invalid request", errors[0]["message"] if errors else "invalid request",
                       errors=orjson.loads(orjson.dumps(errors, default=str)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=getattr(exc, "headers", None))


def _install_request_id(app: FastAPI) -> None:
    @app.middleware("http")
    async def _request_id(request: Request, call_next: Any) -> Response:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request.state.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() \
            else uuid.uuid4().hex
        with logs.bound(request_id=request.state.request_id, plane="control"):
            response: Response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response
