"""The job API: submit a graph (``POST /jobs``, ``/jobs/batch``), list, read, follow, cancel and
purge jobs and fetch their artifacts; rename a job (``PATCH /jobs/{id}``) and run its graph again
(``POST /jobs/{id}/rerun``).

Graph bodies are read by the routes themselves (``limits.read_graph``: size and depth caps), so
validation errors stay node-scoped; the OpenAPI document still carries the Graph schema
(``api_docs.document_bodies``).

A re-run is a new job of the caller's with the same graph and ``metadata.rerun_of`` naming the
first; ``seed: "new"`` gives every node with a seed param a fresh one, ``"same"`` keeps the graph's
seeds and pins those a node chose itself and reported in its output (so "same seed" means the
same result even where the graph left the seed to chance).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.errors import GraphValidationError, UnknownJob
from dualplane.common.job_state import RUNTIME_FIELDS
from dualplane.common.models import Event, Job
from dualplane.common.registry import TaskRegistry
from dualplane.control_plane.api_common import (
    SUBMISSION_PARAMETERS,
    IdempotencyKey,
    Plane,
    RequestLimits,
    Timestamp,
    User,
    job_response,
    limits_of,
    owned_job,
    plane_of,
    problem,
    problem_of,
    submission,
)
from dualplane.control_plane.auth import USER_ID_PATTERN, Forbidden
from dualplane.control_plane.job_names import MAX_NAME, InvalidName, RenameContention, check_name
from dualplane.control_plane.limits import MAX_SEQ, Limits, TooDeep
from dualplane.control_plane.listing import JobFilter
from dualplane.control_plane.policy import PolicyRefusal
from dualplane.control_plane.service import JobConflict, Submitted

#: Jobs of one batch read back at once for the answer (each read holds a pooled Redis connection).
BATCH_READS = 8
#: Fresh seeds are drawn below this: every task's seed field takes it (the smallest bound is 2^32 - 1).
SEED_LIMIT = 2**32

GRAPH_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Graph"}}}}}

router = APIRouter()


class RenameRequest(BaseModel):
    """Body of ``PATCH /jobs/{id}``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_NAME, description="The job's new name.")


class RerunRequest(BaseModel):
    """Body of ``POST /jobs/{id}/rerun`` (may be empty)."""

    model_config = ConfigDict(extra="forbid")
    seed: Literal["same", "new"] = Field("same", description="same: the graph's seeds (and those its nodes chose "
                                                             "and reported); new: a fresh seed for every node with "
                                                             "a seed param.")


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/jobs", status_code=201, response_model=Job,
             openapi_extra={**GRAPH_BODY, "parameters": SUBMISSION_PARAMETERS}, responses={
    200: {"description": "Same id or Idempotency-Key as an existing job of yours, or finished within `wait`"},
    202: {"description": "`wait` elapsed first; the job as it is now"}, 409: {"description": "Id taken"},
    413: {"description": "Body too large"}, 422: {"description": "Invalid graph (`node_errors`)"},
    429: {"description": "Submission rate limit"}})
async def submit_job(request: Request) -> Response:
    """Submit a graph. `?wait=<seconds>` returns the finished job when it ends in time."""
    # the caller, the parameters, the plane and the limits read here rather than solved as FastAPI
    # dependencies and parameters per request (the largest cost of a submission outside it)
    who, wait, idempotency_key = await submission(request)
    control, limits = plane_of(request), limits_of(request)
    document = await limits.read_graph(request)
    limits.check_graph(document)
    await control.admit(limits, who.user)
    graph = control.validate(document)
    decision = await control.screen(graph, user=who.user, stage="submit", request_id=request.state.request_id)
    result = await control.submit(graph, request_id=request.state.request_id, user=who.user,
                                  idempotency_key=idempotency_key, audit=decision)
    return await job_response(request, result.job_id, created=result.created, wait=wait, user=who.user,
                              job=result.job)


@router.post("/jobs/batch", status_code=201, responses={422: {"description": "An invalid graph (by index)"}})
async def submit_batch(request: Request, who: User, control: Plane, limits: RequestLimits) -> Response:
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
    await control.admit(limits, who.user, amount=len(parsed))
    decisions = []
    for index, graph in enumerate(parsed):  # all judged before any is queued, like the validation
        try:
            decisions.append(await control.screen(graph, user=who.user, stage="submit",
                                                  request_id=request.state.request_id))
        except PolicyRefusal as exc:
            return problem_of(exc, index=index)
    # submitted together: the bridge sends the creates of one tick in one pipeline
    results = await asyncio.gather(*(
        control.submit(graph, request_id=request.state.request_id, user=who.user, audit=decision)
        for graph, decision in zip(parsed, decisions, strict=True)), return_exceptions=True)
    submitted: list[Submitted] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result  # the first by index; the others were created (a retry with their ids finds them)
        submitted.append(result)
    reads = asyncio.Semaphore(BATCH_READS)

    async def read(result: Submitted) -> bytes:
        if result.job is not None:  # new: as stored, no read back
            return result.job.model_dump_json().encode()
        async with reads:
            return (await control.get_job(result.job_id)).model_dump_json().encode()

    jobs = await asyncio.gather(*(read(result) for result in submitted))
    return Response(b'{"jobs":[' + b",".join(jobs) + b"]}", status_code=201, media_type="application/json")


@router.get("/jobs")
async def jobs(who: User, control: Plane, status: Annotated[list[str] | None, Query()] = None,
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
    page = await control.list_jobs(flt, limit=limit, cursor=cursor)
    return {"jobs": page.jobs, "next_cursor": page.next_cursor}


@router.get("/jobs/{job_id}", response_model=Job)
async def get_job(job_id: str, who: User, control: Plane) -> Job:
    """Job status, progress and every node's state."""
    return await owned_job(control, job_id, who)


@router.get("/jobs/{job_id}/events", response_model=list[Event])
async def job_events(job_id: str, who: User, control: Plane, since: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
                     limit: Annotated[int | None, Query(ge=1, le=10_000)] = None) -> list[Event]:
    """Events with seq > since, in order (the durable event stream)."""
    await owned_job(control, job_id, who)
    return await control.events(job_id, since, count=limit)


@router.post("/jobs/{job_id}/cancel", status_code=202)
async def cancel_job(job_id: str, who: User, control: Plane) -> dict[str, str]:
    """Ask the owning plane to cancel; running tasks stop at their next step."""
    await owned_job(control, job_id, who)
    return {"id": job_id, "status": await control.cancel(job_id)}


@router.delete("/jobs/{job_id}", status_code=204, responses={409: {"description": "Job not finished"}})
async def purge_job(job_id: str, who: User, control: Plane) -> Response:
    """Delete a finished job, its events and its artifacts."""
    await owned_job(control, job_id, who)
    await control.purge(job_id)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/artifacts")
async def job_artifacts(job_id: str, who: User, control: Plane,
                        expires_s: Annotated[int, Query(ge=60, le=7 * 24 * 3600)] = 3600) -> dict[str, Any]:
    """Every artifact of the job with a presigned GET URL."""
    job = await owned_job(control, job_id, who)
    return {"artifacts": await control.artifact_links(job, expires_s)}


@router.patch("/jobs/{job_id}", tags=["jobs"], response_model=Job, openapi_extra=_body(RenameRequest),
              responses={422: {"description": "Invalid name"}})
async def rename_job(job_id: str, request: Request, who: User, control: Plane, limits: RequestLimits) -> Response:
    """Rename one of your jobs (admins: anyone's)."""
    await owned_job(control, job_id, who)
    body = await _read(request, limits, RenameRequest)
    try:
        name = check_name(body.name)
    except InvalidName as exc:
        return problem(422, "Invalid name", str(exc))
    try:
        renamed = await control.rename(job_id, name)
    except RenameContention as exc:
        raise JobConflict(str(exc)) from None
    if not renamed:
        raise UnknownJob(job_id)
    return Response((await control.get_job(job_id)).model_dump_json(), media_type="application/json")


@router.post("/jobs/{job_id}/rerun", tags=["jobs"], status_code=201, response_model=Job,
             openapi_extra=_body(RerunRequest), responses={422: {"description": "The graph no longer validates (e.g. an input is gone)"},
                        429: {"description": "Submission rate limit"}})
async def rerun_job(job_id: str, request: Request, who: User, control: Plane, limits: RequestLimits,
                    idempotency_key: IdempotencyKey = None) -> Response:
    """Run one of your jobs' graph again as a new job of yours (``metadata.rerun_of``: this one)."""
    job = await owned_job(control, job_id, who)
    body = await _read(request, limits, RerunRequest, optional=True)
    graph = rerun_graph(job, new_seeds=body.seed == "new", registry=control.registry)
    limits.check_graph(graph)
    validated = control.validate(graph)
    decision = await control.screen(validated, user=who.user, stage="submit", request_id=request.state.request_id)
    await control.admit(limits, who.user)
    result = await control.submit(validated, request_id=request.state.request_id, user=who.user, audit=decision,
                                  idempotency_key=f"rerun:{job_id}:{idempotency_key}" if idempotency_key else None)
    new = await control.get_job(result.job_id)
    return Response(new.model_dump_json(), status_code=201 if result.created else 200,
                    media_type="application/json", headers={"Location": f"/jobs/{new.id}"})


async def _read(request: Request, limits: Limits, model: type[BaseModel], *, optional: bool = False) -> Any:
    """The body as ``model`` (read through the size and depth caps); FastAPI's own 422 otherwise."""
    document = await limits.read_json(request) if not optional or await request.body() else {}
    try:
        return model.model_validate(document)
    except pydantic.ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from None


def _deep_batch(exc: TooDeep) -> JSONResponse:
    """A batch nested too deep: by graph index (node-scoped) when the deep part is in a graph."""
    path = exc.spot.path if exc.spot else ()
    if len(path) >= 2 and path[0] == "graphs" and isinstance(path[1], int):
        return problem(422, "Invalid graph in batch", f"graph {path[1]} is invalid",
                       errors={str(path[1]): exc.node_errors(skip=2)})
    return problem(422, "Invalid batch", str(exc))


def rerun_graph(job: Job, *, new_seeds: bool, registry: TaskRegistry) -> dict[str, Any]:
    """The graph of ``job`` as a new submission: no runtime state, no client id (that would name
    the same job), ``metadata.rerun_of``, and the seeds as asked."""
    graph = job.graph.model_dump(mode="json", exclude_defaults=True)
    graph.pop("id", None)
    graph["metadata"] = {**graph.get("metadata", {}), "rerun_of": job.id}
    outputs = {node.id: node.output for node in job.graph.nodes if isinstance(node.output, dict)}
    for node in graph["nodes"]:
        for name in RUNTIME_FIELDS:
            node.pop(name, None)
        params = node.setdefault("params", {})
        spec = registry.get(node["task"])
        if not ((spec is not None and "seed" in spec.params.model_fields) or "seed" in params):
            continue
        if new_seeds:
            params["seed"] = secrets.randbelow(SEED_LIMIT)
            continue
        chosen = outputs.get(node["id"], {}).get("seed")
        if params.get("seed") is None and isinstance(chosen, int) and not isinstance(chosen, bool):
            params["seed"] = chosen
    return graph
