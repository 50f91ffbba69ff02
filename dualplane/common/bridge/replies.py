"""Replies of the bridge's client as text: it never decodes (redis-py types them ``bytes | str``)."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lenient_text(value: Any) -> str:
    """Text even from bytes that are not UTF-8 (a poison message stays readable)."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
