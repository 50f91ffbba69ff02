"""Keep and redo: rename a job (``PATCH /jobs/{id}``), run its graph again
(``POST /jobs/{id}/rerun``), and the gallery of every output (``GET /outputs``).

A re-run is a new job of the caller's with the same graph and ``metadata.rerun_of`` naming the
first; ``seed: "new"`` gives every node with a seed param a fresh one, ``"same"`` keeps the graph's
seeds and pins those a node chose itself and reported in its output (so "same seed" means the
same result even where the graph left the seed to chance).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.errors import UnknownJob
from dualplane.common.job_state import RUNTIME_FIELDS
from dualplane.common.models import Job
from dualplane.common.registry import TaskRegistry
from dualplane.control_plane.api_common import User, problem
from dualplane.control_plane.auth import Principal
from dualplane.control_plane.gallery import OutputKind, list_outputs
from dualplane.control_plane.job_names import MAX_NAME, InvalidName, RenameContention, check_name, rename
from dualplane.control_plane.limits import Limits
from dualplane.control_plane.service import ControlPlane, JobConflict

#: Fresh seeds are drawn below this: every task's seed field takes it (the smallest bound is 2^32 - 1).
SEED_LIMIT = 2**32

OwnedJob = Callable[[str, Principal], Awaitable[Job]]


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


def jobs_router(control: ControlPlane, limits: Limits, owned_job: OwnedJob) -> APIRouter:
    router = APIRouter(tags=["jobs"])

    async def read(request: Request, model: type[BaseModel], *, optional: bool = False) -> Any:
        """The body as ``model`` (read through the size and depth caps); FastAPI's own 422 otherwise."""
        document = await limits.read_json(request) if not optional or await request.body() else {}
        try:
            return model.model_validate(document)
        except pydantic.ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
            raise RequestValidationError(errors) from None

    @router.patch("/jobs/{job_id}", response_model=Job, openapi_extra=_body(RenameRequest),
                  responses={422: {"description": "Invalid name"}})
    async def rename_job(job_id: str, request: Request, who: User) -> Response:
        """Rename one of your jobs (admins: anyone's)."""
        await owned_job(job_id, who)
        body = await read(request, RenameRequest)
        try:
            name = check_name(body.name)
        except InvalidName as exc:
            return problem(422, "Invalid name", str(exc))
        try:
            renamed = await rename(control.bridge, job_id, name)
        except RenameContention as exc:
            raise JobConflict(str(exc)) from None
        if not renamed:
            raise UnknownJob(job_id)
        return Response((await control.get_job(job_id)).model_dump_json(), media_type="application/json")

    @router.post("/jobs/{job_id}/rerun", status_code=201, response_model=Job, openapi_extra=_body(RerunRequest),
                 responses={422: {"description": "The graph no longer validates (e.g. an input is gone)"},
                            429: {"description": "Submission rate limit"}})
    async def rerun_job(job_id: str, request: Request, who: User,
                        idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Response:
        """Run one of your jobs' graph again as a new job of yours (``metadata.rerun_of``: this one)."""
        job = await owned_job(job_id, who)
        body = await read(request, RerunRequest, optional=True)
        graph = rerun_graph(job, new_seeds=body.seed == "new", registry=control.registry)
        limits.check_graph(graph)
        validated = control.validate(graph)
        decision = await control.screen(validated, user=who.user, stage="submit", request_id=request.state.request_id)
        await limits.admit(control.bridge, who.user)
        result = await control.submit(validated, request_id=request.state.request_id, user=who.user, audit=decision,
                                      idempotency_key=f"rerun:{job_id}:{idempotency_key}" if idempotency_key else None)
        new = await control.get_job(result.job_id)
        return Response(new.model_dump_json(), status_code=201 if result.created else 200,
                        media_type="application/json", headers={"Location": f"/jobs/{new.id}"})

    @router.get("/outputs", tags=["outputs"], responses={503: {"description": "No object store"}})
    async def outputs(who: User, kind: OutputKind | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                      cursor: Annotated[str | None, Query(max_length=256)] = None) -> Response:
        """Every output of your jobs (audio, video, images, text), newest first, with presigned
        URLs (a video's poster too). Follow ``next_cursor``."""
        if control.artifacts is None:
            return problem(503, "No object store", "this control plane has no S3 endpoint configured")
        page = await list_outputs(control.bridge, control.artifacts, who.user, kind=kind, limit=limit, cursor=cursor)
        return JSONResponse({"outputs": page.outputs, "next_cursor": page.next_cursor})

    return router


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
