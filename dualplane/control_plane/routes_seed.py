"""The seeds' routes, as thin adapters over the graph API: ``POST /generate`` (one generator,
synchronous), ``POST /job`` (an orchestrator's entry: a generator or a planned goal, sync or
async) and the external-worker protocol (``POST /jobs/{id}/nodes/{node}/claim``,
``POST /jobs/report``; see :mod:`.external`).

Underneath they are the graph routes: a one-node graph (or the planner's graph) goes through the
same limits, rate, content policy (:meth:`ControlPlane.screen`, as ``submit`` or, for a goal, as
``compose`` with the intent's words), :meth:`ControlPlane.submit` and ``?wait=`` as ``POST /jobs``. Their answers are
the Job with the seeds' ``jobId`` beside ``id``, plus the artifacts' GET URLs once it finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from dualplane.common.errors import UnknownJob
from dualplane.common.registry import TaskSpec
from dualplane.control_plane.api_common import (
    AppSettings,
    IdempotencyKey,
    Plane,
    RequestLimits,
    User,
    WaitQuery,
    hub_of,
    limits_of,
    plane_of,
    settings_of,
)
from dualplane.control_plane.auth import Forbidden, Principal
from dualplane.control_plane.compose_api import ComposeRequest, plan_or_problem
from dualplane.control_plane.limits import valid_job_id
from dualplane.control_plane.policy import PolicyText, intent_texts
from dualplane.control_plane.service import FINISHED, ControlPlane

#: The seeds' generator names (``model``) and the task each one is; a task's own name works too.
GENERATORS = {"music": "generate_music", "musicgen": "generate_music", "arrangement": "arrange_music",
              "voice": "synthesize_voice", "tts": "synthesize_voice", "video": "render_video",
              "visualizer": "visualize_audio", "lora": "train_lora", "voice_training": "train_voice"}
#: ``model`` names that go to the planner: ``compose`` lets it choose the parts, the others are
#: its goals (a hint of the parts; ``music`` is the MusicGen generator here, not the goal).
GOALS = ("compose", "song", "music_video", "lora_video", "voice_track")
#: Seed-style field names → the params they may mean, tried in order against the task's params;
#: a name that is one of the task's own params is always that param.
SEED_FIELDS = {"text": ("prompt", "text", "narrative"), "prompt": ("prompt", "text", "narrative"),
               "duration": ("duration_s",), "seconds": ("duration_s",)}
#: Most nodes a claim may ask upload URLs for.
MAX_UPLOADS = 32
NodeId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]


class JobRequest(BaseModel):
    """Body of ``POST /job``."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=64, examples=["music"],
                       description=f"A generator ({', '.join(GENERATORS)} or a task name from /tasks) or a planned "
                                   f"goal ({', '.join(GOALS)}).")
    mode: Literal["sync", "async"] = Field("async", description="async: 202 with the job at once; sync: wait for "
                                                               "it (bounded like ?wait= on /jobs).")
    payload: dict[str, Any] | str = Field(default_factory=dict, description=(
        "A generator's params (seed names such as text, duration, seed accepted); a goal's intent: its text, "
        "or {intent | brief, strict} as /compose takes it, or the form {prompt, duration_s, style, inputs, "
        "options}."))


class ClaimRequest(BaseModel):
    """Body of ``POST /jobs/{id}/nodes/{node}/claim``."""

    model_config = ConfigDict(extra="forbid")
    lease_s: float | None = Field(None, ge=1, le=3600, description="How long the claim holds without a report "
                                                                   "(default DUALPLANE_LEASE_S); every report "
                                                                   "renews it.")
    uploads: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]] = Field(
        default_factory=list, max_length=MAX_UPLOADS, description="Names of the outputs it will upload: each "
                                                                  "gets a presigned PUT URL.")


class ErrorReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field("ExternalError", min_length=1, max_length=128)
    message: str = Field(..., min_length=1, max_length=4000)


class Report(BaseModel):
    """Body of ``POST /jobs/report``: one report of the claim holding ``fence``."""

    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(..., validation_alias=AliasChoices("jobId", "job_id"), min_length=1, max_length=64)
    node: NodeId
    fence: int = Field(..., ge=1, description="The claim's token (the claim's `fence`).")
    attempt: int | None = Field(None, ge=1, description="When given, must be the claim's attempt.")
    kind: Literal["progress", "data", "complete", "fail"]
    progress: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    message: str | None = Field(None, max_length=2000)
    data: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    artifacts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]] = Field(
        default_factory=list, max_length=MAX_UPLOADS, description="Outputs uploaded to the claim's PUT URLs.")
    error: ErrorReport | None = None


router = APIRouter(tags=["seeds"])


@router.post("/generate", responses={
    200: {"description": "The finished job, `jobId` and its `artifacts` with GET URLs"},
    202: {"description": "The wait ran out first: the job as it is"}, 422: {"description": "Invalid field"}})
async def generate(request: Request, who: User, control: Plane, limits: RequestLimits, settings: AppSettings,
                   wait: WaitQuery = None, idempotency_key: IdempotencyKey = None) -> Response:
    """Run one generator and wait for it (at most `?wait=`, `DUALPLANE_MAX_WAIT_S`): e.g.
    `{"text": "solo piano melody"}` makes music; `model` picks another generator."""
    body = await limits.read_json(request)
    if not isinstance(body, dict):
        raise _invalid(("body",), "the body must be a JSON object of fields")
    fields = dict(body)
    model = fields.pop("model", "music")
    spec = _generator(control, model, ("body", "model"), goals=False)
    graph = _one_node_graph(spec, fields, ("body",))
    job_id, created = await _submit(request, who, graph, _scoped("generate", idempotency_key),
                                    stage="submit")
    return await _answer(request, job_id, created, wait if wait is not None else settings.max_wait_s, who.user)


@router.post("/job", responses={
    200: {"description": "sync: the finished job"}, 202: {"description": "async, or the wait ran out"},
    422: {"description": "Invalid model or payload"}})
async def job(request: Request, who: User, control: Plane, limits: RequestLimits, settings: AppSettings,
              wait: WaitQuery = None, idempotency_key: IdempotencyKey = None) -> Response:
    """An orchestrator's entry point: `model` is a generator or a planned goal, `payload` its
    params or intent; `async` answers 202 + `jobId` at once, `sync` waits like `?wait=`."""
    document = await limits.read_json(request)
    try:
        body = JobRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        raise _request_error(exc, ("body",)) from None
    key = _scoped("job", idempotency_key)
    if body.model in GOALS:
        planned = await _plan(control, body)
        if isinstance(planned, Response):
            return planned
        graph, goal, texts = planned
        job_id, created = await _submit(request, who, graph, key, stage="compose", goal=goal, texts=texts)
    else:
        if not isinstance(body.payload, dict):
            raise _invalid(("body", "payload"), "a generator's payload is an object of its params")
        spec = _generator(control, body.model, ("body", "model"), goals=True)
        job_id, created = await _submit(request, who, _one_node_graph(spec, body.payload, ("body", "payload")),
                                        key, stage="submit")
    if body.mode == "async":
        return await _answer(request, job_id, created, None, who.user, status_code=202)
    return await _answer(request, job_id, created, wait if wait is not None else settings.max_wait_s, who.user)


@router.post("/jobs/{job_id}/nodes/{node_id}/claim", responses={
    200: {"description": "The claim: `fence` (its token), params, inputs, upload URLs"},
    403: {"description": "Not an orchestrator"}, 404: {"description": "No such job or external node"},
    409: {"description": "Not claimable now (held by a live claim, ended, upstream not done)"}})
async def claim(request: Request, job_id: str, node_id: str, who: User, control: Plane, limits: RequestLimits,
                settings: AppSettings) -> Response:
    """An external worker takes an external node (orchestrator role). Report on it with
    `POST /jobs/report` before the lease runs out, or another claimant may take it."""
    _orchestrator(who)
    if not valid_job_id(job_id):
        raise UnknownJob(job_id)
    document = await limits.read_json(request) if await request.body() else {}
    try:
        body = ClaimRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        raise _request_error(exc, ("body",)) from None
    taken = await control.external.claim(job_id, node_id, lease_s=body.lease_s or settings.lease_s,
                                         uploads=body.uploads, claimant=who.user)
    token = taken.pop("token")
    return JSONResponse({"jobId": job_id, "job_id": job_id, "node": node_id, "fence": token, **taken})


@router.post("/jobs/report", responses={
    403: {"description": "Not an orchestrator"}, 404: {"description": "No such job or external node"},
    409: {"description": "A stale fence, a late or duplicate report: nothing was changed"},
    422: {"description": "Invalid report (e.g. an artifact that was not uploaded)"}})
async def report(request: Request, who: User, control: Plane, limits: RequestLimits) -> Response:
    """Progress, data, completion or failure of a claimed external node (orchestrator role),
    checked against the claim's fence: a late or duplicate report is a 409 and changes nothing."""
    _orchestrator(who)
    try:
        body = Report.model_validate(await limits.read_json(request))
    except pydantic.ValidationError as exc:
        raise _request_error(exc, ("body",)) from None
    if not valid_job_id(body.job_id):
        raise UnknownJob(body.job_id)
    missing = {"progress": "progress", "data": "data", "fail": "error"}.get(body.kind)
    if missing and getattr(body, missing) is None:
        raise _invalid(("body", missing), f"a {body.kind} report needs {missing}")
    result = await control.external.report(
        body.job_id, body.node, body.fence, kind=body.kind, attempt=body.attempt, progress=body.progress,
        message=body.message, data=body.data, output=body.output, artifacts=body.artifacts,
        error=body.error.model_dump() if body.error else None)
    return JSONResponse({"jobId": body.job_id, "job_id": body.job_id, "node": body.node, "fence": body.fence,
                         **result})


async def _submit(request: Request, who: Principal, graph: dict[str, Any], idempotency_key: str | None, *,
                  stage: Literal["submit", "compose"], goal: str | None = None,
                  texts: Sequence[PolicyText] = ()) -> tuple[str, bool]:
    control, limits = plane_of(request), limits_of(request)
    limits.check_graph(graph)
    await control.admit(limits, who.user)
    validated = control.validate(graph)  # judged by the content policy like any submission (422 when refused)
    decision = await control.screen(validated, user=who.user, stage=stage, goal=goal, texts=texts,
                                    request_id=request.state.request_id)
    result = await control.submit(validated, request_id=request.state.request_id, user=who.user,
                                  idempotency_key=idempotency_key, audit=decision)
    return result.job_id, result.created


async def _plan(control: ControlPlane, body: JobRequest) -> tuple[dict[str, Any], str, list[PolicyText]] | Response:
    """The planner's graph for a goal (with its goal and the intent's words, for the content
    policy as /compose screens them), or the /compose problem that says why there is none."""
    compose = _compose_body(body.model, body.payload)
    plan = await plan_or_problem(control.planner, compose)
    if isinstance(plan, Response):
        return plan
    return plan.graph, plan.goal, intent_texts(compose.intent, compose.brief)


async def _answer(request: Request, job_id: str, created: bool, wait: float | None, user: str, *,
                  status_code: int | None = None) -> Response:
    """The job (as `POST /jobs?wait=` answers it) with `jobId`, and its artifact URLs once finished."""
    control = plane_of(request)
    if wait:
        await hub_of(request).waits.wait(job_id, user, min(wait, settings_of(request).max_wait_s))
    job = await control.get_job(job_id)
    finished = job.status in FINISHED
    body = {"jobId": job_id, **job.model_dump(mode="json")}
    if finished:
        body["artifacts"] = await control.artifact_links(job)
    code = status_code or (200 if finished else 202)
    return JSONResponse(body, status_code=code, headers={"Location": f"/jobs/{job_id}"})


def _generator(control: ControlPlane, model: Any, loc: tuple[Any, ...], *, goals: bool) -> TaskSpec:
    name = GENERATORS.get(model, model) if isinstance(model, str) else None
    spec = control.registry.get(name) if name else None
    if spec is None:
        also = f", a planned goal ({', '.join(GOALS)})" if goals else ""
        raise _invalid(loc, f"unknown model {model!r}: a generator ({', '.join(GENERATORS)}){also} or a task name "
                            "from /tasks")
    return spec


def _one_node_graph(spec: TaskSpec, fields: dict[str, Any], loc: tuple[Any, ...]) -> dict[str, Any]:
    """A graph of one node of ``spec`` whose params are ``fields`` with the seeds' names mapped
    onto the task's; an unknown or invalid field is a 422 naming the field as it was sent."""
    params, sent_as = _params(spec, fields, loc)
    try:
        spec.params.model_validate(params)
    except pydantic.ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False, include_input=False):
            where = error["loc"]
            field = sent_as.get(str(where[0]), where[0]) if where else None
            errors.append({**error, "loc": (*loc, *([field, *where[1:]] if field is not None else []))})
        raise RequestValidationError(errors) from None
    return {"nodes": [{"id": spec.name, "task": spec.name, "plane": spec.plane, "params": params}]}


def _params(spec: TaskSpec, fields: dict[str, Any], loc: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    own = spec.params.model_fields
    params: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    for field, value in fields.items():
        target = field if field in own else next((p for p in SEED_FIELDS.get(field, ()) if p in own), None)
        if target is None:
            seeds = sorted(f for f, ps in SEED_FIELDS.items() if any(p in own for p in ps))
            raise _invalid((*loc, field), f"unknown field {field!r} for {spec.name}; its params: "
                                          f"{', '.join(own) or 'none'}" + (f" (or {', '.join(seeds)})" if seeds else ""))
        if target in params:
            raise _invalid((*loc, field), f"{field!r} and {sent_as[target]!r} both mean {target!r}: give one")
        params[target], sent_as[target] = value, field
    return params, sent_as


def _compose_body(model: str, payload: dict[str, Any] | str) -> ComposeRequest:
    """A goal's payload as /compose's body: text, {intent | brief, strict, name}, or the form."""
    goal = None if model == "compose" else model
    if isinstance(payload, str):
        document: dict[str, Any] = {"intent": {"prompt": payload, "goal": goal} if goal else payload}
    elif "intent" in payload or "brief" in payload:
        document = dict(payload)
    else:
        form = {("prompt" if k == "text" else "duration_s" if k == "duration" else k): v for k, v in payload.items()}
        document = {"intent": {**form, **({"goal": goal} if goal else {})}}
    try:
        return ComposeRequest.model_validate({**document, "dry_run": False})
    except pydantic.ValidationError as exc:
        raise _request_error(exc, ("body", "payload")) from None


def _scoped(route: str, idempotency_key: str | None) -> str | None:
    """Keys of these routes live apart from /jobs' and /compose's: the same key there is another request."""
    return f"{route}:{idempotency_key}" if idempotency_key else None


def _orchestrator(who: Principal) -> None:
    if who.role != "orchestrator":
        raise Forbidden("claims and reports of external nodes need a token of role orchestrator")


def _invalid(loc: tuple[Any, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def _request_error(exc: pydantic.ValidationError, loc: tuple[Any, ...]) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (*loc, *e["loc"])}
                                   for e in exc.errors(include_url=False, include_input=False)])

