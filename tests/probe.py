"""A task that checks delivery guarantees from the inside, and a worker process serving it.

``probe`` looks at its node's state in the job hash when it starts: a node that already
succeeded must never start again, so it records a violation if it finds one. It records every
start and every completion (``probe:runs``), sleeps in cancellable steps and writes one
artifact under its node's deterministic key, as a real task does. Chaos tests read the lists
afterwards; nothing in it stands in for a part of the system.

``python -m tests.probe`` runs a worker with the default catalog plus ``probe``
(configured from the environment like ``dualplane worker``; ``PROBE_REDIS_URL`` is where the
probe writes its records). With ``PROBE_BREAK_LOOP=1`` its consume loop meets a bug once it
holds a job: fault injection into our own code, to see the process report it and exit.
With ``PROBE_FREEZE_AFTER=<Bridge method>`` the process stops for good once that method has
returned (writing its result to the file ``PROBE_FROZEN_FILE``), so a test can SIGKILL it between
that step and the one that follows it. ``python -m tests.probe replay <entry>`` replays one dead
letter, as the admin API does, and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import TaskRegistry, task
from dualplane.common.retry import NO_RETRY
from dualplane.tasks import default_registry

RUNS = "probe:runs"
VIOLATIONS = "probe:violations"


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(0.2, ge=0, le=600)
    steps: int = Field(2, ge=1, le=10_000)


_clients: dict[str, redis.Redis] = {}


def _records() -> redis.Redis:
    url = os.environ["PROBE_REDIS_URL"]
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


@task("probe", plane="python", params=ProbeParams, retry=NO_RETRY)
def probe(ctx: TaskContext, p: ProbeParams) -> dict[str, Any]:
    """Record the run, check it is not a run after success, sleep in steps, write an artifact."""
    records = _records()
    prefix = os.environ.get("DUALPLANE_KEY_PREFIX", "dp:")
    state = records.hget(f"{prefix}job:{ctx.job_id}", f"n:{ctx.node_id}")
    if state is not None and json.loads(state).get("status") == "succeeded":
        records.rpush(VIOLATIONS, f"{ctx.job_id}/{ctx.node_id}: attempt {ctx.attempt} started after it succeeded")
    me = f"{ctx.job_id}/{ctx.node_id}/{os.getpid()}/{ctx.attempt}"
    records.rpush(RUNS, f"start {me}")
    for step in range(p.steps):
        ctx.check_cancelled()
        time.sleep(p.seconds / p.steps)
        ctx.on_step(step + 1, p.steps)
    ctx.put_artifact("out.bin", me.encode(), "application/octet-stream")
    records.rpush(RUNS, f"end {me}")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def probe_registry() -> TaskRegistry:
    registry = default_registry()
    registry.add(probe.__task_spec__)
    return registry


def runs(client: redis.Redis) -> list[tuple[str, str, str, int, int]]:
    """``(start|end, job, node, pid, attempt)`` of every recorded run."""
    out = []
    for raw in client.lrange(RUNS, 0, -1):
        kind, who = raw.decode().split(" ", 1)
        job, node, pid, attempt = who.split("/")
        out.append((kind, job, node, int(pid), int(attempt)))
    return out


class BrokenLoop:
    """Replaces a consumer's ``_poll``: the first poll while it holds a job raises."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._poll = consumer._poll

    async def __call__(self) -> None:
        if self._consumer.busy:
            raise RuntimeError("a bug in the consume loop")
        await self._poll()


def freeze_after(method: str, report: Path) -> None:
    """Make ``Bridge.<method>`` write its result to ``report`` and then never return: the
    process is frozen between that step and the next one until the test kills it."""
    from dualplane.common.bridge import Bridge

    original = getattr(Bridge, method)

    async def step_then_freeze(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        written = report.with_suffix(".partial")
        written.write_text(json.dumps(result))
        written.replace(report)  # whole or absent, for the test that polls for it
        await asyncio.Event().wait()

    setattr(Bridge, method, step_then_freeze)


async def _replay(settings: Any, entry_id: str) -> None:
    from dualplane.common.bridge import Bridge

    async with Bridge(settings.bridge_config()) as bridge:
        await bridge.replay_dead_letter(entry_id)


def main() -> int:
    from dualplane.cli.planes import configure_logging, run_async
    from dualplane.common.errors import PlaneFailed
    from dualplane.common.settings import Settings
    from dualplane.data_plane.worker import Worker

    settings = Settings()
    configure_logging(settings.log_level)
    if os.environ.get("PROBE_FREEZE_AFTER"):
        freeze_after(os.environ["PROBE_FREEZE_AFTER"], Path(os.environ["PROBE_FROZEN_FILE"]))
    if sys.argv[1:2] == ["replay"]:
        asyncio.run(_replay(settings, sys.argv[2]))
        return 0
    worker = Worker(settings, registry=probe_registry())
    if os.environ.get("PROBE_BREAK_LOOP"):
        worker.consumer._poll = BrokenLoop(worker.consumer)  # type: ignore[method-assign]
    try:
        run_async(worker.run())
    except PlaneFailed:
        return 1  # what `dualplane worker` does
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
