"""The sha256 of a file: artifacts record it when uploaded from disk, model manifests for every file."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Read size while hashing: large model files never sit in memory whole.
HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> tuple[str, int]:
    """``(hex sha256, size in bytes)`` of the file at ``path``, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
