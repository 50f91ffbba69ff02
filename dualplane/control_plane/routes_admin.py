"""``/admin``: dead letters to act on and the content policy's refusals, for admins only.

A dead letter is a stream message no plane could process (a poison message, one delivered past
``max_deliveries``): the consumer parked it in ``stream:dead`` with the reason and failed its job.
Once the cause is fixed (a worker that has the task, a bug fixed) an admin replays it: the message
goes back on its source stream with the job's next ``handoff_seq`` and the job is runnable again
(:meth:`~dualplane.control_plane.service.ControlPlane.replay_dead_letter`, one atomic step); one that is still
poison is dead-lettered again with its reason. Discarding deletes the entry and leaves the job as
it is (failed). Other roles get a 403: these routes show every user's jobs and texts.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from dualplane.control_plane.api_common import Plane, User, problem
from dualplane.control_plane.auth import Forbidden, Principal

#: A Redis stream entry id (what names a dead letter and an audit entry).
ENTRY_ID = r"^\d{1,20}-\d{1,20}$"
_ENTRY_ID = re.compile(ENTRY_ID)
Cursor = Annotated[str | None, Query(pattern=ENTRY_ID, description="`next_cursor` of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=1000)]
#: Why a replay did not happen (``Bridge.replay_dead_letter``) → the answer.
_NOT_REPLAYED = {
    "job-gone": "its job no longer exists (expired or purged); discard the dead letter",
    "not-failed-by-it": "its job was not failed by this dead letter (it ended otherwise, or another dead letter "
                        "of it was replayed); discard it",
    "moved": "its job changed while the replay was prepared; try again",
    "not-replayable": "its source is not a job stream",
}


def _admin(who: Principal) -> None:
    if who.role != "admin":
        raise Forbidden("admins only")


def _summary(entry: dict[str, str]) -> dict[str, Any]:
    return {"id": entry["entry"], "reason": entry.get("reason", ""), "job": entry.get("job") or None,
            "stream": entry.get("stream", ""), "message_id": entry.get("id", ""), "group": entry.get("group", ""),
            "ts": float(entry.get("ts") or 0)}


def _message(entry: dict[str, str]) -> dict[str, Any]:
    """The parked message: its fields, the handoff (``m``) as JSON when it is JSON."""
    try:
        fields = orjson.loads(entry.get("fields") or "{}")
    except orjson.JSONDecodeError:
        return {"raw": entry.get("fields", "")}
    # a handoff that is not readable (what made it poison) is shown as it was
    with contextlib.suppress(KeyError, TypeError, orjson.JSONDecodeError):
        fields["m"] = orjson.loads(fields["m"])
    return fields


def _page(rows: list[dict[str, Any]], limit: int) -> str | None:
    return rows[-1]["id"] if len(rows) == limit else None


router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/dead-letters")
async def dead_letters(who: User, control: Plane, limit: Limit = 100, cursor: Cursor = None) -> dict[str, Any]:
    """Dead letters, newest first: reason, job, source stream and message id, time. Follow `next_cursor`."""
    _admin(who)
    rows = [_summary(e) for e in await control.dead_letter_page(count=limit, before=cursor)]
    return {"dead_letters": rows, "next_cursor": _page(rows, limit)}


@router.get("/dead-letters/{entry_id}", responses={404: {"description": "No such dead letter"}})
async def dead_letter(entry_id: str, who: User, control: Plane) -> Response:
    """One dead letter with the message it parked."""
    _admin(who)
    entry = await control.dead_letter(entry_id) if _ENTRY_ID.fullmatch(entry_id) else None
    if entry is None:
        return _no_letter(entry_id)
    return JSONResponse({**_summary(entry), "message": _message(entry)})


@router.post("/dead-letters/{entry_id}/replay", responses={
    404: {"description": "No such dead letter (replayed or discarded already)"},
    409: {"description": "It cannot be replayed (its job is gone or ended otherwise)"}})
async def replay(entry_id: str, who: User, control: Plane) -> Response:
    """Put the message back on its source stream and make its job runnable again; the dead
    letter is gone once it is replayed, so a second replay is a 404 and runs nothing."""
    _admin(who)
    entry = await control.dead_letter(entry_id) if _ENTRY_ID.fullmatch(entry_id) else None
    if entry is None:
        return _no_letter(entry_id)
    outcome, message_id = await control.replay_dead_letter(entry_id)
    if outcome == "gone":  # replayed or discarded by someone else just now
        return _no_letter(entry_id)
    if outcome != "replayed":
        return problem(409, "Cannot replay", f"dead letter {entry_id}: {_NOT_REPLAYED[outcome]}", why=outcome)
    return JSONResponse({"replayed": entry_id, "job": entry.get("job") or None, "stream": entry.get("stream"),
                         "message_id": message_id})


@router.delete("/dead-letters/{entry_id}", status_code=204, responses={
    404: {"description": "No such dead letter"}})
async def discard(entry_id: str, who: User, control: Plane) -> Response:
    """Delete a dead letter (its job stays as it is)."""
    _admin(who)
    if not _ENTRY_ID.fullmatch(entry_id) or not await control.discard_dead_letter(entry_id):
        return _no_letter(entry_id)
    return Response(status_code=204)


@router.get("/audit")
async def audit(who: User, control: Plane, limit: Limit = 100, cursor: Cursor = None) -> dict[str, Any]:
    """Requests the content policy refused, newest first: who, when, which rule on which node, why."""
    _admin(who)
    rows = []
    for entry in await control.audit_page(count=limit, before=cursor):
        rows.append({"id": entry["entry"], "ts": float(entry.get("ts") or 0), "user": entry.get("user"),
                     "stage": entry.get("stage"), "rule": entry.get("rule"), "node": entry.get("node"),
                     "detail": entry.get("detail"), "goal": entry.get("goal"),
                     "tasks": entry["tasks"].split(",") if entry.get("tasks") else [],
                     "graph_id": entry.get("graph_id"), "request_id": entry.get("request_id"),
                     "policy": entry.get("policy"), "digest": entry.get("digest")})
    return {"refusals": rows, "next_cursor": _page(rows, limit)}


def _no_letter(entry_id: str) -> JSONResponse:
    return problem(404, "Unknown dead letter", f"no dead letter {entry_id!r}")
