"""Structured logs: JSON lines that carry ``job_id``, ``node_id``, ``request_id``, ``plane``
and ``worker`` wherever they apply; readable text in a terminal.

The ids live in a context variable, bound around the work they describe
(:func:`bound`), so every line logged inside — by dualplane or by a library such as
transformers — carries them without being passed around. Asyncio tasks and
``asyncio.to_thread`` copy the context; the executor's task threads are entered with
the node's context explicitly.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import orjson

#: The ids a log line may carry, in the order they are printed.
CONTEXT_FIELDS = ("plane", "worker", "request_id", "job_id", "node_id")
_EMPTY: dict[str, str] = {}  # never mutated: bind() always builds a new dict
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("dualplane_log_context")


def bind(**fields: str | None) -> contextvars.Token[dict[str, str]]:
    """Add ids to the current context (None values are skipped); returns a reset token."""
    merged = {**_context.get(_EMPTY), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto every record (as attributes, for both formatters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get(_EMPTY).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level logger [job=… node=… req=…] message`` for people at a terminal."""

    _short: ClassVar[dict[str, str]] = {"request_id": "req", "job_id": "job", "node_id": "node"}

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{self._short.get(k, k)}={getattr(record, k)}" for k in CONTEXT_FIELDS
                       if getattr(record, k, None) is not None)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if ids:
            text = f"{stamp} {record.levelname.lower():7} {record.name} [{ids}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(level: str = "INFO", *, json: bool | None = None, stream: Any = None) -> None:
    """Route all logging through one handler: JSON lines unless ``json`` is False or
    (when None) the stream is a terminal."""
    stream = stream or sys.stderr
    use_json = (not stream.isatty()) if json is None else json
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
