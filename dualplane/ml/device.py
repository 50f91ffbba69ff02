"""Which device and dtype a worker's models use, and what torch sees (``GET /debug/torch``).

torch is imported inside the functions: the control plane imports the task modules, which
import this, and must stay free of torch.
"""

from __future__ import annotations

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
