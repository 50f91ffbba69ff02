"""What can be run: the task catalog (``GET /tasks``), the live workers (``GET /workers``) and
the model registry (``GET /models``), so clients and the UI build their forms from them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from dualplane.common.settings import ModelSettings
from dualplane.control_plane.api_common import AppSettings, Plane, User, current_principal

router = APIRouter()


@router.get("/tasks")
async def tasks(who: User, control: Plane) -> dict[str, Any]:
    """The task catalog: plane, description, GPU need and params JSON Schema of every task."""
    return {"tasks": control.task_catalog()}


@router.get("/workers")
async def workers(who: User, control: Plane) -> dict[str, Any]:
    """Live workers (capability key not expired) with their manifests."""
    return {"workers": [m.model_dump(mode="json") for m in await control.workers()]}


@router.get("/models", dependencies=[Depends(current_principal)])
async def models(settings: AppSettings) -> dict[str, Any]:
    """The model registry (names tasks accept for `model`-like params, and their kind)."""
    return {"models": model_entries(settings.models)}


def model_entries(models: ModelSettings) -> list[dict[str, str]]:
    """Name and kind of every registry entry (the file a worker reads by default)."""
    from dualplane.ml.model_store import ModelRegistry

    registry = ModelRegistry.from_settings(models)
    return [{"name": name, "kind": registry.get(name).kind} for name in registry.names()]
