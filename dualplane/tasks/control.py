"""Small tasks of the control plane (no torch, no GPU)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY


class EmitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: dict[str, Any] = Field(default_factory=dict, description="Returned as the node's output.")


@task("emit", plane="control", params=EmitParams, retry=NO_RETRY)
async def emit(ctx: TaskContext, p: EmitParams) -> dict[str, Any]:
    """Output the given object (seeds downstream `$ref`s)."""
    return dict(p.value)


class CollectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    values: dict[str, Any] = Field(default_factory=dict, description="Usually `$ref`s to upstream outputs.")


@task("collect", plane="control", params=CollectParams, retry=NO_RETRY)
async def collect(ctx: TaskContext, p: CollectParams) -> dict[str, Any]:
    """Join point: output the (resolved) values it was given."""
    return {"values": p.values}
