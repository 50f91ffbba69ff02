"""``/me/preferences``: a small JSON document per user (the UI keeps the last generator and its
options there), replaced whole."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dualplane.control_plane.api_common import Plane, RequestLimits, User, problem

#: Largest preferences document kept per user.
MAX_PREFERENCES_BYTES = 16 * 1024

router = APIRouter()


@router.get("/me/preferences")
async def get_preferences(who: User, control: Plane) -> dict[str, Any]:
    """Your saved preferences (e.g. the last generator and its options)."""
    return await control.preferences(who.user)


@router.put("/me/preferences", response_model=dict[str, Any], responses={413: {"description": "Preferences too large"}})
async def put_preferences(request: Request, who: User, control: Plane, limits: RequestLimits) -> Any:
    """Replace your preferences with a JSON object."""
    document = await limits.read_json(request, max_bytes=MAX_PREFERENCES_BYTES)
    if not isinstance(document, dict):
        return problem(422, "Invalid preferences", "preferences must be a JSON object")
    await control.put_preferences(who.user, document)
    return document
