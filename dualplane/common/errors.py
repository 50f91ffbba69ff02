"""Every exception dualplane raises on purpose."""

from __future__ import annotations

from typing import Any


class DualplaneError(Exception):
    """Base of all dualplane errors."""


class GraphValidationError(DualplaneError):
    """A graph was rejected before anything was queued.

    ``node_errors`` maps a node id (or ``"_graph"`` for graph-wide problems) to a
    list of ``{"field": ..., "message": ...}`` entries.
    """

    def __init__(self, node_errors: dict[str, list[dict[str, Any]]]) -> None:
        self.node_errors = node_errors
        first = next(iter(node_errors.items()))
        super().__init__(f"invalid graph: {first[0]}: {first[1][0]['message']}")


class UnknownJob(DualplaneError):
    """No job with that id (or it expired)."""


class BridgeClosed(DualplaneError):
    """The bridge was used after close, or Redis went away."""


class TaskCancelled(DualplaneError):
    """Raised inside a task when its job was cancelled; the node ends ``cancelled``."""


class TransientError(DualplaneError):
    """A failure worth retrying (lost connection, CUDA OOM after freeing cache...)."""


class NodeTimeout(DualplaneError):
    """One attempt of a node ran past its ``timeout_s``."""


class SkipNode(DualplaneError):
    """Raised by a hook to skip a node without running it."""
