"""The string metadata of a safetensors file, read from its header without loading a tensor
(LoRA checkpoints and voice files say what they are there)."""

from __future__ import annotations

import json


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes: an 8-byte little-endian header length, then a
    JSON header. :class:`ValueError` for bytes that are not a safetensors file."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 + size:
        raise ValueError("not a safetensors file: truncated header")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise ValueError("not a safetensors file: its header is not JSON") from None
    return dict(header.get("__metadata__") or {})
