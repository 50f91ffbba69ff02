"""dualplane: generative-media jobs as graphs across a control plane and GPU data-plane workers.

The public API, for writing tasks and for talking to a running plane::

    from dualplane import TaskContext, Retry, task, Client

Every name is imported on first use (PEP 562): ``import dualplane`` costs next to nothing, and
a worker or a script pays only for what it touches (the clients bring httpx and websockets, a
task's context the object store's input fetching).
"""

from __future__ import annotations

import importlib

#: typing's flag without importing typing (type checkers read any TYPE_CHECKING as true)
TYPE_CHECKING = False

from dualplane.common.version import __version__ as __version__

#: Where each public name lives.
_SOURCES = {
    # writing a task
    "task": "dualplane.common.registry",
    "TaskContext": "dualplane.common.context",
    "Retry": "dualplane.common.retry",
    "NO_RETRY": "dualplane.common.retry",
    # the error tree: its root, its families, and what a task raises or catches
    "DualplaneError": "dualplane.common.errors",
    "NotFound": "dualplane.common.errors",
    "Conflict": "dualplane.common.errors",
    "Unprocessable": "dualplane.common.errors",
    "TooManyRequests": "dualplane.common.errors",
    "Unavailable": "dualplane.common.errors",
    "GraphValidationError": "dualplane.common.errors",
    "UnknownJob": "dualplane.common.errors",
    "TransientError": "dualplane.common.errors",
    "TaskCancelled": "dualplane.common.errors",
    "NodeTimeout": "dualplane.common.errors",
    "ObjectNotFound": "dualplane.common.errors",
    # the clients of the HTTP API
    "Client": "dualplane.client",
    "AsyncClient": "dualplane.client",
    "ApiError": "dualplane.client",
}

__all__ = [
    "NO_RETRY", "ApiError", "AsyncClient", "Client", "Conflict", "DualplaneError", "GraphValidationError",
    "NodeTimeout", "NotFound", "ObjectNotFound", "Retry", "TaskCancelled", "TaskContext", "TooManyRequests",
    "TransientError", "Unavailable", "UnknownJob", "Unprocessable", "task",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports
    from dualplane.client import ApiError, AsyncClient, Client
    from dualplane.common.context import TaskContext
    from dualplane.common.errors import (
        Conflict,
        DualplaneError,
        GraphValidationError,
        NodeTimeout,
        NotFound,
        ObjectNotFound,
        TaskCancelled,
        TooManyRequests,
        TransientError,
        Unavailable,
        UnknownJob,
        Unprocessable,
    )
    from dualplane.common.registry import task
    from dualplane.common.retry import NO_RETRY, Retry


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'dualplane' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
