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


class Unavailable(DualplaneError):
    """A service dualplane depends on cannot be reached now (HTTP 503 with Retry-After)."""

    retry_after_s = 1


class BridgeClosed(Unavailable):
    """The bridge was used after close, or Redis went away."""


class PlaneFailed(DualplaneError):
    """A plane's consume loop died: the process reports it and exits non-zero, so that a
    supervisor starts a fresh one (its messages are reclaimed by the others meanwhile)."""


class ObjectNotFound(DualplaneError, ValueError):
    """No object under that key *for this job*: it does not exist, or it belongs to another
    user. Both read alike on purpose, so the error cannot tell whether someone else's key exists."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key!r}")
        self.key = key


class DataEventTooLarge(DualplaneError, ValueError):
    """A task emitted a data event over the size limit (a task bug: data events are small
    previews and notes; bulk output belongs in an artifact)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"data event of {size} bytes of JSON is over the limit of {limit} bytes "
                         "(MAX_DATA_EVENT_BYTES); store bulk output as an artifact")
        self.size = size
        self.limit = limit


class TaskCancelled(DualplaneError):
    """Raised inside a task when its job was cancelled; the node ends ``cancelled``."""


class TransientError(DualplaneError):
    """A failure worth retrying (lost connection, CUDA OOM after freeing cache...)."""


class StoreUnavailable(TransientError, Unavailable):
    """The object store did not answer (connection refused, timeout, 5xx): retried by tasks,
    HTTP 503 from the API."""


class NodeTimeout(DualplaneError):
    """One attempt of a node ran past its ``timeout_s``."""


class SkipNode(DualplaneError):
    """Raised by a hook to skip a node without running it."""
