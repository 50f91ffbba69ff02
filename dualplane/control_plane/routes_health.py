"""Probes and scrapes: ``GET /livez`` (the process answers), ``GET /health`` (what the plane can
do now) and ``GET /metrics`` (Prometheus). None needs a token; the deployment keeps /metrics
from outside."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from dualplane.control_plane.api_common import Plane

router = APIRouter()


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process answers (a liveness probe): a consume loop that dies ends the process
    itself, and a Redis or store outage is /health's business, not a reason to restart."""
    return {"status": "alive"}


@router.get("/health")
async def health(control: Plane) -> JSONResponse:
    """Without Redis the plane can do nothing (503). Without the object store it still takes,
    runs, reports and cancels jobs, and only uploads and artifact links fail (503 each): 200
    "degraded", so that a load balancer or a liveness probe does not make a partial outage
    whole."""
    ok, body = await control.health()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(control: Plane) -> Response:
    return Response(await control.scrape(), media_type=CONTENT_TYPE_LATEST)
