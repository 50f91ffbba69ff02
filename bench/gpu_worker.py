"""The worker process of ``bench/gpu_tasks.py``: ``dualplane worker`` with one more task.

    python bench/gpu_worker.py      (started by gpu_tasks.py, configured by the same env vars)

``bench_direct`` times the DIRECT side of the benchmark — ``gpu_tasks``' ``direct_*`` functions,
the pipeline call made the way a user's script makes it — inside the worker's own process, on
its warm models, with the framework around it but not inside the timed call. Two processes
running the same tiny model differed by up to 20 % from run to run of the benchmark on the
shared development machine (memory placement, caches), which swamped a few-% overhead; in one
process that difference is gone.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import TaskRegistry, task


class BenchDirectParams(BaseModel):
    bench: str = Field(description="A key of gpu_direct.DIRECT (and of gpu_tasks.BENCHES).")
    params: dict[str, Any] = Field(description="The job params the task gets.")
    inputs: list[str] = Field(default_factory=list,
                              description="Object keys the direct call reads, fetched before the timing.")


@task("bench_direct", plane="python", params=BenchDirectParams)
def bench_direct(ctx: TaskContext, p: BenchDirectParams) -> dict[str, Any]:
    """Time a benchmark's direct pipeline call in this worker process (bench/gpu_tasks.py only)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_direct

    blobs = {key: ctx.get_artifact(key) for key in p.inputs}
    return dataclasses.asdict(gpu_direct.DIRECT[p.bench](ctx.models, p.params, blobs))


def registry() -> TaskRegistry:
    """The default catalog plus ``bench_direct`` (the control plane validates against it too)."""
    from dualplane.tasks import default_registry

    catalog = default_registry()
    catalog.add(bench_direct.__task_spec__)  # type: ignore[attr-defined]
    return catalog


def main() -> None:
    from dualplane.cli.planes import configure_logging, run_async
    from dualplane.common.settings import Settings
    from dualplane.data_plane.worker import Worker

    settings = Settings()
    configure_logging(settings.log_level)
    run_async(Worker(settings, registry=registry()).run())


if __name__ == "__main__":
    main()
