"""``get_capabilities`` (python plane): what the worker that runs it can do."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY


class CapabilitiesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task("get_capabilities", plane="python", params=CapabilitiesParams, retry=NO_RETRY)
async def get_capabilities(ctx: TaskContext, p: CapabilitiesParams) -> dict[str, Any]:
    """Report this worker's capability manifest: tasks, device, VRAM, warm models, load."""
    if ctx.describe_worker is None:
        raise RuntimeError("get_capabilities runs on a data-plane worker")
    return ctx.describe_worker()
