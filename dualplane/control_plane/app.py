"""HTTP shell of the control plane (FastAPI): submit, read, cancel, health, metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dualplane.common.errors import GraphValidationError, UnknownJob
from dualplane.common.models import Event, Graph, Job
from dualplane.common.settings import Settings
from dualplane.control_plane.service import ControlPlane

PROBLEM = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """The one error shape of the API (RFC 9457)."""
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
                        status_code=status, media_type=PROBLEM)


def create_app(settings: Settings, *, plane: ControlPlane | None = None) -> FastAPI:
    """Build the app; the control plane starts and stops with the app's lifespan."""
    metrics_registry = CollectorRegistry()
    control = plane or ControlPlane(settings, metrics_registry=metrics_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await control.start()
        try:
            yield
        finally:
            await control.stop(settings.shutdown_grace_s)

    app = FastAPI(title="dualplane control plane", version="0.1.0", lifespan=lifespan)
    app.state.control = control

    @app.exception_handler(GraphValidationError)
    async def _invalid_graph(request: Request, exc: GraphValidationError) -> JSONResponse:
        return problem(422, "Invalid graph", str(exc), node_errors=exc.node_errors)

    @app.exception_handler(UnknownJob)
    async def _unknown_job(request: Request, exc: UnknownJob) -> JSONResponse:
        return problem(404, "Unknown job", f"no job {exc.args[0]!r}")

    @app.middleware("http")
    async def _request_id(request: Request, call_next: Any) -> Response:
        request.state.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        response: Response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response

    @app.post("/jobs", status_code=201, responses={200: {"description": "The job with that id already existed"},
                                                    422: {"description": "Invalid graph, with node_errors"}})
    async def submit_job(request: Request, graph: dict[str, Any] = Body(..., examples=[
            Graph.model_json_schema().get("examples", [{}])[0]])) -> JSONResponse:
        """Submit a graph; returns the job id. Resubmitting a client-chosen id returns that job."""
        result = await control.submit(graph, request_id=request.state.request_id)
        return JSONResponse({"id": result.job_id, "status": result.status, "created": result.created},
                            status_code=201 if result.created else 200)

    @app.get("/jobs/{job_id}", response_model=Job)
    async def get_job(job_id: str) -> Job:
        """Job status, progress and every node's state."""
        return await control.get_job(job_id)

    @app.get("/jobs/{job_id}/events", response_model=list[Event])
    async def job_events(job_id: str, since: int = Query(0, ge=0)) -> list[Event]:
        """Events with seq > since, in order (the durable event stream)."""
        await control.get_job(job_id)
        return await control.bridge.events(job_id, since)

    @app.post("/jobs/{job_id}/cancel", status_code=202)
    async def cancel_job(job_id: str) -> dict[str, str]:
        """Ask the owning plane to cancel; running tasks see it between steps."""
        return {"id": job_id, "status": await control.cancel(job_id)}

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = await control.bridge.ping()
        return JSONResponse({"status": "ok" if ok else "unavailable", "redis": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        control.metrics.busy.set(control.runner.busy)
        return Response(generate_latest(control.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
