"""Which device and dtype a worker's models use, and what torch sees (``GET /debug/torch``).

torch is imported inside the functions: the control plane imports the task modules, which
import this, and must stay free of torch. So must an idle worker on a CPU host (torch is most
of its memory): :func:`describe_device` asks torch only where a GPU may be present
(:func:`gpu_may_be_present`), and :func:`after_torch_import` lets a worker configure torch
when a task first imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: Names accepted for a registry entry's ``dtype`` (``auto`` lets :func:`select_dtype` choose).
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


def select_device(requested: str | None = None) -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu``; an explicit request wins."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def select_dtype(device: str, requested: str | None = None) -> Any:
    """The torch dtype for ``device``: CUDA → bf16 where supported, else fp16; CPU → fp32.

    :param requested: ``auto``/None, or a name from :data:`DTYPE_NAMES` to force one.
    """
    import torch

    if requested and requested != "auto":
        try:
            return getattr(torch, DTYPE_NAMES[requested.lower()])
        except KeyError:
            raise ValueError(f"unknown dtype {requested!r}; use auto or one of {sorted(DTYPE_NAMES)}") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def describe_torch() -> dict[str, Any]:
    """torch version, CUDA availability, device names and memory (for ``GET /debug/torch``)."""
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda_available": False, "device": "cpu", "devices": []}
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "device": select_device(),
        "default_dtype": str(select_dtype(select_device())).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "devices": [],
    }
    if info["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            info["devices"].append({
                "index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                "total_bytes": total, "free_bytes": free,
                "allocated_bytes": torch.cuda.memory_allocated(index),
                "reserved_bytes": torch.cuda.memory_reserved(index),
            })  # fmt: skip
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


#: Device files a GPU driver gives a host (or a container it was handed to): NVIDIA's character
#: devices, ROCm's compute interface (torch.cuda runs on HIP there), WSL2's GPU paravirtualization.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def nvidia_gpu_count(dev: Path = Path("/dev")) -> int:
    """NVIDIA GPUs handed to this host or container (``/dev/nvidia<N>``), without CUDA or torch."""
    try:
        return sum(1 for entry in dev.iterdir() if re.fullmatch(r"nvidia\d+", entry.name))
    except OSError:
        return 0


def gpu_may_be_present(device_files: Sequence[str] = GPU_DEVICE_FILES) -> bool:
    """False only where no GPU driver shows on this host: no device file and no ``nvidia-smi``
    (the driver's tool, on the PATH of Windows hosts too). Only then is the device known to be
    the CPU without asking torch, whose import costs an idle worker some 200 MiB."""
    return any(Path(path).exists() for path in device_files) or shutil.which("nvidia-smi") is not None


def describe_device() -> dict[str, Any]:
    """:func:`describe_torch` where a GPU may be present; the CPU, torch not imported, elsewhere."""
    if "torch" in sys.modules or gpu_may_be_present():
        return describe_torch()
    return {"device": "cpu", "devices": []}


def after_torch_import(configure: Callable[[ModuleType], None]) -> None:
    """Call ``configure(torch)`` now if torch is imported, else as soon as the import that first
    loads it (a task's, in any thread) has run torch's ``__init__``, before that import returns:
    the task's first tensor operation sees the configuration."""
    torch = sys.modules.get("torch")
    if torch is not None:
        configure(torch)
    else:
        sys.meta_path.insert(0, _AfterImport("torch", configure))


class _AfterImport(importlib.abc.MetaPathFinder):
    """A finder that finds nothing itself: it removes itself on the first search for ``name``,
    lets the other finders find it, and wraps that spec's loader so ``configure`` runs after it."""

    def __init__(self, name: str, configure: Callable[[ModuleType], None]) -> None:
        self._name = name
        self._configure = configure

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)  # the import system holds the module's lock: one search gets here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run_module = loader.exec_module
        configure = self._configure

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            configure(module)

        # on this spec's loader instance alone: module.__loader__ stays the real loader
        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
