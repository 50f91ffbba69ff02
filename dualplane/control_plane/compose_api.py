"""The body of ``POST /compose`` (also ``POST /job``'s planned goals) and its planning step:
the planner's plan, or the problem that says why there is none."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dualplane.common.models import Brief
from dualplane.control_plane.api_common import problem
from dualplane.control_plane.job_names import MAX_NAME, compose_name
from dualplane.control_plane.planner import NotUnderstood, Plan, Planner, StrictRefusal, StructuredIntent, Unplannable


class ComposeRequest(BaseModel):
    """Body of ``POST /compose``: an intent (words, or the UI's form) or a brief built by the client."""

    model_config = ConfigDict(extra="forbid")
    intent: Annotated[str, Field(min_length=1, max_length=4000)] | StructuredIntent | None = Field(
        None, examples=["a 30-second lo-fi track with a rainy-night video"])
    brief: Brief | None = Field(None, description="A brief (brief.schema.json) to compose directly, instead of "
                                                  "an intent.")
    strict: bool = Field(False, description="Refuse (422, with the notes) a plan that substitutes a part or cannot "
                                            "make one, instead of submitting a different job.")
    dry_run: bool = Field(False, description="Only plan: return the brief, the graph and the notes without "
                                             "submitting.")
    name: str | None = Field(None, max_length=MAX_NAME, description="What to call the job (default: the intent's "
                                                                    "first clause, or the planned song's title).")

    @model_validator(mode="after")
    def _one_source(self) -> ComposeRequest:
        if (self.intent is None) == (self.brief is None):
            raise ValueError("give exactly one of intent or brief")
        return self


def compose_request(document: Any) -> ComposeRequest:
    """The /compose body, with FastAPI's own 422 when it does not fit the model."""
    try:
        return ComposeRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from None


async def plan_or_problem(planner: Planner, body: ComposeRequest) -> Plan | JSONResponse:
    """The named plan of ``body`` (its graph's ``metadata.name`` set), or the 422 saying why
    nothing was planned."""
    try:
        source = body.brief or body.intent
        assert source is not None  # ComposeRequest._one_source
        plan = await planner.plan(source, strict=body.strict)
    except pydantic.ValidationError as exc:
        return problem(422, "Invalid intent", str(exc.errors(include_url=False)[0]["msg"]))
    except NotUnderstood as exc:
        return problem(422, "Nothing to make", str(exc))
    except StrictRefusal as exc:
        return problem(422, "Plan differs from the request", str(exc), notes=exc.notes)
    except Unplannable as exc:
        return problem(422, "Nothing can be made", str(exc), notes=exc.notes)
    name = body.name or _planned_name(body, plan)
    if name is not None:  # else the submission names it after its tasks
        plan.graph["metadata"]["name"] = name
    return plan


def _planned_name(body: ComposeRequest, plan: Plan) -> str | None:
    """A planned job's name: the intent's first clause, the song's or brief's title, the brief's prompt."""
    intent = body.intent.prompt if isinstance(body.intent, StructuredIntent) else body.intent
    title = (plan.song or {}).get("title") or (body.brief.title if body.brief else None)
    return compose_name(intent, title, body.brief.prompt if body.brief else None)
