"""The worker process of ``bench/gpu_check.py``: ``bench/gpu_worker.py`` (``dualplane worker`` plus
``bench_direct``) plus ``bench_vram``, which resets, reads and frees the worker's CUDA memory
between jobs, so each job's peak is measured in the process that ran it.

    python bench/gpu_check_worker.py      (started by gpu_check.py, configured by env vars)
"""

from __future__ import annotations

import gc
from typing import Any, Literal

from pydantic import BaseModel, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import TaskRegistry, task


class VramParams(BaseModel):
    action: Literal["reset", "read", "free"] = Field(
        description="reset: zero the peak counter; read: the peak since the reset; free: drop the "
                    "warm models and hand cached blocks back (before the next task's models)")


@task("bench_vram", plane="python", params=VramParams)
def bench_vram(ctx: TaskContext, p: VramParams) -> dict[str, Any]:
    """CUDA memory of this worker process (bench/gpu_check.py only); None figures without CUDA."""
    import torch

    if p.action == "free":
        ctx.models.clear()
        gc.collect()
    if not torch.cuda.is_available():
        return {"peak_bytes": None, "allocated_bytes": None}
    if p.action == "free":
        torch.cuda.empty_cache()
    if p.action == "reset":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return {"peak_bytes": torch.cuda.max_memory_allocated(), "allocated_bytes": torch.cuda.memory_allocated()}


def registry() -> TaskRegistry:
    """gpu_worker's catalog (default tasks + bench_direct) plus bench_vram; the control plane of
    gpu_check validates against it too."""
    import gpu_worker  # bench/ is this script's directory

    catalog = gpu_worker.registry()
    catalog.add(bench_vram.__task_spec__)  # type: ignore[attr-defined]
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
