"""``/uploads``: a user's input files (voice clips, images, lyrics): store, list, delete.

An upload is checked before it is stored (:mod:`.upload_checks`: accepted types only, bytes that
are what they declare), stored content-addressed under ``uploads/<user>/<sha256>/<name>`` and
indexed per user (:mod:`.uploads`). Users see and delete only their own: another user's upload
is a 404 like a missing one, so keys do not leak.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from dualplane.control_plane.api_common import AppSettings, Plane, RequestLimits, User, problem
from dualplane.control_plane.service import ControlPlane
from dualplane.control_plane.upload_checks import UploadRefused, declared_type, inspect_upload
from dualplane.control_plane.uploads import UploadKind, UploadRecord

#: How long an upload's ``url`` (a presigned GET, for previews) is valid.
PREVIEW_URL_S = 3600
UPLOAD_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class Upload(UploadRecord):
    """An upload as served: its record plus a presigned GET URL (valid an hour) for previews."""

    url: str = Field(description="Presigned GET URL of the bytes, valid for an hour.")


router = APIRouter(tags=["uploads"])


@router.post("/uploads", status_code=201, response_model=Upload, responses={
    413: {"description": "Upload too large"}, 415: {"description": "Type not accepted, or the bytes are not "
                                                                    "what the Content-Type says"},
    422: {"description": "Invalid name or an empty body"}, 503: {"description": "No object store"}})
async def upload(request: Request, who: User, control: Plane, limits: RequestLimits, settings: AppSettings,
                 name: Annotated[str, Query(pattern=UPLOAD_NAME)],
                 consent: Annotated[bool, Query(description="You consent to this recording being used to "
                                                            "clone its voice.")] = False) -> Response:
    """Store an input file (voice clips, images, lyrics); the body is the file, the
    Content-Type its type (from the name's extension when absent). Returns its object key for
    graph params and intents."""
    if control.artifacts is None:
        return problem(503, "No object store", "this control plane has no S3 endpoint configured")
    if not name.strip("."):
        return problem(422, "Invalid upload", f"{name!r} is not a file name")
    data = await limits.read_bytes(request, max_bytes=settings.max_upload_bytes)
    if not data:
        return problem(422, "Invalid upload", "the upload is empty")
    try:
        facts = inspect_upload(data, declared_type(request.headers.get("content-type"), name))
    except UploadRefused as exc:
        return problem(415, "Unsupported upload", str(exc))
    try:
        ref = await control.artifacts.put_upload(who.user, name, data, facts.content_type)
    except ValueError as exc:
        return problem(422, "Invalid upload", str(exc))
    record = UploadRecord(key=ref["key"], name=name, size=ref["size"], content_type=facts.content_type,
                          sha256=ref["sha256"], kind=facts.kind, created_at=time.time(), consent=consent,
                          duration_s=facts.duration_s, width=facts.width, height=facts.height)
    await control.uploads.put(who.user, record)
    return JSONResponse(await _served(control, record), status_code=201)


@router.get("/uploads", responses={503: {"description": "No object store"}})
async def list_uploads(who: User, control: Plane, kind: UploadKind | None = None) -> Response:
    """Your uploads, newest first (``kind``: only audio, image or text)."""
    if control.artifacts is None:
        return problem(503, "No object store", "this control plane has no S3 endpoint configured")
    records = await control.uploads.list(who.user, kind)
    return JSONResponse({"uploads": [await _served(control, record) for record in records]})


@router.delete("/uploads/{sha256}/{name}", status_code=204, responses={404: {"description": "No such upload "
                                                                                          "of yours"}})
async def delete_upload(sha256: str, name: str, who: User, control: Plane) -> Response:
    """Delete one of your uploads: its bytes and its record. Jobs that name it fail to read it
    from then on."""
    key = f"uploads/{who.user}/{sha256}/{name}"
    if control.artifacts is None or await control.uploads.get(who.user, key) is None:
        return problem(404, "Unknown upload", f"you have no upload {sha256}/{name}")
    await control.artifacts.delete(key)  # the bytes first: a store outage (503) leaves both as they were
    await control.uploads.remove(who.user, key)
    return Response(status_code=204)


async def _served(control: ControlPlane, record: UploadRecord) -> dict[str, Any]:
    assert control.artifacts is not None
    return {**record.model_dump(mode="json"), "url": await control.artifacts.presigned_url(record.key, PREVIEW_URL_S)}
