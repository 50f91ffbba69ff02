"""``GET /outputs``: the gallery of every output of the caller's jobs (:mod:`.gallery`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from dualplane.control_plane.api_common import Plane, User, problem
from dualplane.control_plane.gallery import OutputKind

router = APIRouter()


@router.get("/outputs", tags=["jobs", "outputs"], responses={503: {"description": "No object store"}})
async def outputs(who: User, control: Plane, kind: OutputKind | None = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    """Every output of your jobs (audio, video, images, text), newest first, with presigned
    URLs (a video's poster too). Follow ``next_cursor``."""
    if control.artifacts is None:
        return problem(503, "No object store", "this control plane has no S3 endpoint configured")
    page = await control.outputs(who.user, kind=kind, limit=limit, cursor=cursor)
    return JSONResponse({"outputs": page.outputs, "next_cursor": page.next_cursor})
