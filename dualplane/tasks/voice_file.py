"""The file ``train_voice`` writes and ``synthesize_voice`` reads: ``voice.safetensors``, the
speaker embedding (and LoRA tensors) with string metadata tagged :data:`VOICE_FORMAT`."""

from __future__ import annotations

from typing import Any

from dualplane.ml.safetensors_meta import safetensors_metadata

#: Format tag in the metadata of a voice file.
VOICE_FORMAT = "dualplane-voice"
VOICE_VERSION = "1"


def write_voice(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """The bytes of a voice file; ``metadata`` gets the format tag and version."""
    from safetensors.torch import save

    return save(tensors, metadata={"format": VOICE_FORMAT, "version": VOICE_VERSION, **metadata})


def read_voice(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a ``voice.safetensors``; rejects anything else."""
    from safetensors.torch import load

    try:
        metadata = safetensors_metadata(data)
    except ValueError as exc:
        raise ValueError(f"not a voice file ({exc})") from None
    if metadata.get("format") != VOICE_FORMAT:
        raise ValueError(f"not a voice file (format {metadata.get('format')!r}, expected {VOICE_FORMAT!r})")
    tensors = load(data)
    if "speaker_embedding" not in tensors:
        raise ValueError("voice file has no speaker_embedding")
    return tensors, metadata
