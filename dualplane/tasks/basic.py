"""Small CPU tasks of the python plane, used by tests, the benchmark and the demo.

They run through exactly the same path as the GPU tasks: params model, retry policy,
progress through the stream writer, cancellation, artifacts.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import TaskContext
from dualplane.common.errors import TransientError
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY, Retry


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any = Field(None, description="Echoed back as the output's `value`.")


@task("noop", plane="python", params=NoopParams, retry=NO_RETRY)
async def noop(ctx: TaskContext, p: NoopParams) -> dict[str, Any]:
    """Do nothing and succeed (dispatch benchmarks)."""
    return {"value": p.value}


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(1.0, ge=0, le=3600, description="How long to sleep.")
    steps: int = Field(10, ge=1, le=10_000, description="Progress reports (and cancel checks) along the way.")


@task("sleep", plane="python", params=SleepParams, retry=NO_RETRY)
async def sleep(ctx: TaskContext, p: SleepParams) -> dict[str, Any]:
    """Sleep in steps, reporting progress and honouring cancellation at each step."""
    for step in range(p.steps):
        ctx.check_cancelled()
        await asyncio.sleep(p.seconds / p.steps)
        ctx.on_step(step + 1, p.steps)
    return {"slept_s": p.seconds}


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field("failed on purpose", description="The error message.")


@task("fail", plane="python", params=FailParams)
async def fail(ctx: TaskContext, p: FailParams) -> dict[str, Any]:
    """Always fail with a non-transient error (failure propagation tests)."""
    raise ValueError(p.message)


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_times: int = Field(1, ge=0, le=10, description="Attempts that fail with a transient error first.")


@task("flaky", plane="python", params=FlakyParams, retry=Retry(max_attempts=3, backoff_s=0.05))
async def flaky(ctx: TaskContext, p: FlakyParams) -> dict[str, Any]:
    """Fail transiently on the first `fail_times` attempts, then succeed (retry tests)."""
    if ctx.attempt <= p.fail_times:
        raise TransientError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


class ChecksumParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., max_length=10_000_000, description="Text to hash.")
    name: str = Field("checksum.txt", description="Artifact name.")


@task("checksum", plane="python", params=ChecksumParams)
def checksum(ctx: TaskContext, p: ChecksumParams) -> dict[str, Any]:
    """SHA-256 of a text, written as an artifact (a sync task: it runs in a worker thread)."""
    digest = hashlib.sha256(p.text.encode()).hexdigest()
    ctx.log.info("hashed %d characters", len(p.text))
    ctx.progress(0.5)
    ref = ctx.put_artifact(p.name, f"{digest}\n".encode(), "text/plain")
    return {"sha256": digest, "artifact": ref["key"]}
