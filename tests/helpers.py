"""Small helpers shared by tests (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def unique_name(prefix: str = "t") -> str:
    """S3-valid unique bucket/id name (lowercase, digits, hyphens)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def descendants(pid: int) -> set[int]:
    """All live descendant pids of `pid`, read from /proc (Linux), to prove stop() leaks nothing."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
