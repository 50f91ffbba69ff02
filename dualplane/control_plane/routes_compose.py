"""``POST /compose``: plan a graph from an intent or a brief and submit it (``dry_run``: only
plan). The body and the planning step are :mod:`.compose_api`'s, shared with ``POST /job``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from dualplane.control_plane.api_common import (
    IdempotencyKey,
    Plane,
    RequestLimits,
    User,
    WaitQuery,
    job_response,
)
from dualplane.control_plane.compose_api import compose_request, plan_or_problem
from dualplane.control_plane.policy import intent_texts

COMPOSE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ComposeRequest"}}}}}

router = APIRouter()


@router.post("/compose", status_code=201, openapi_extra=COMPOSE_BODY, responses={
    200: {"description": "dry_run: the brief, the planned graph and its notes; or the finished job within `wait`"},
    202: {"description": "`wait` elapsed first"}, 413: {"description": "Body too large"},
    422: {"description": "Invalid intent"}})
async def compose(request: Request, who: User, control: Plane, limits: RequestLimits, wait: WaitQuery = None,
                  idempotency_key: IdempotencyKey = None) -> Response:
    """Plan a graph from intent (free text or structured) and submit it; `dry_run` only plans."""
    body = compose_request(await limits.read_json(request))
    plan = await plan_or_problem(control.planner, body)
    if isinstance(plan, Response):
        return plan
    decision = await control.screen(control.validate(plan.graph), user=who.user, stage="compose", goal=plan.goal,
                                    texts=intent_texts(body.intent, body.brief), request_id=request.state.request_id)
    if body.dry_run:
        return JSONResponse(plan.model_dump(mode="json"))
    limits.check_graph(plan.graph)
    await control.admit(limits, who.user)
    # the key names the request, not the plan: a retry gets the job the first attempt made
    result = await control.submit(plan.graph, request_id=request.state.request_id, user=who.user,
                                  idempotency_key=_compose_key(idempotency_key), audit=decision)
    return await job_response(request, result.job_id, created=result.created, wait=wait, user=who.user,
                              job=result.job)


def _compose_key(idempotency_key: str | None) -> str | None:
    """Compose keys live apart from submit keys: the same key on both is two requests."""
    return f"compose:{idempotency_key}" if idempotency_key else None
