"""Every exception dualplane raises on purpose: one tree, rooted at :class:`DualplaneError`.

Each class carries what the API answers when it reaches a route: its HTTP ``status``, the
problem's ``title`` (RFC 9457, one per class), its ``detail`` (:meth:`~DualplaneError.problem_detail`,
the message by default), any extra problem members (:meth:`~DualplaneError.problem_fields`) and
headers (``Retry-After`` from ``retry_after_s``, ``WWW-Authenticate``). The app has one handler
for the whole tree (``control_plane/app.py``). Status 500 — the root's, and every class that
does not set one — is not shaped: such an error reaching a route is a bug or an internal fault,
answered and logged by the server like any other.

The families live here; an error of one part of the control plane lives beside the code that
raises it (module in brackets) and derives from a family::

    DualplaneError                        500   (not shaped)
    ├── NotFound                          404   Not found
    │   ├── UnknownJob                    404   Unknown job            detail "no job '<id>'"
    │   └── UnknownNode                   404   Unknown node           [control_plane.external]
    ├── Conflict                          409   Conflict
    │   ├── JobConflict                   409                          [control_plane.service]
    │   └── ExternalConflict              409                          [control_plane.external]
    ├── Unprocessable                     422   Unprocessable request
    │   ├── GraphValidationError          422   Invalid graph          + node_errors
    │   ├── PolicyRefusal                 422   Refused by the content policy  + rule, node  [control_plane.policy]
    │   └── InvalidReport                 422   Invalid report         [control_plane.external]
    ├── TooManyRequests                   429   Too many requests      Retry-After
    │   ├── RateLimited                   429   Too many submissions   [control_plane.limits]
    │   ├── TooManyWaits                  429   Too many waits         [control_plane.waits]
    │   └── LoginThrottled                429   Too many failed logins [control_plane.login_limit]
    ├── Unavailable                       503   Service unavailable    Retry-After; detail names the service
    │   ├── RedisUnavailable              503   (the job store, Redis); also a BridgeError
    │   │   └── BridgeClosed              503
    │   └── StoreUnavailable              503   (the object store); also a TransientError
    ├── AuthError                         401   Unauthorized           WWW-Authenticate: Bearer  [control_plane.auth]
    │   └── RefreshRefused                401                          [control_plane.accounts]
    ├── Forbidden                         403   Forbidden              [control_plane.auth]
    ├── TooLarge                          413   Request too large      (400 for a body that is not JSON) [control_plane.limits]
    │   └── TooDeep                       422   Request too large      [control_plane.limits]
    ├── InvalidCursor                     400   Invalid cursor         [control_plane.listing]
    ├── BridgeError                       500   a Redis call failed (the bridge translates every Redis error)
    │   └── RedisUnavailable              (above): the transient ones
    ├── TransientError                    500   a failure worth retrying (tasks)
    │   ├── StoreUnavailable              (above)
    │   └── ModelIntegrityError           [ml.model_store]
    ├── TaskCancelled, NodeTimeout, DataEventTooLarge, ObjectNotFound   (the runtime)
    ├── PlaneFailed                       a plane's consume loop died
    ├── ModelError                        [ml.model_store]: UnknownModel, ModelUnavailable, ModelIntegrityError,
    │                                     PullError [ml.pull]
    ├── PolicyError                       a policy file that cannot be used [control_plane.policy]
    └── AccountError                      an account command that cannot be done [control_plane.accounts]

Redis's own errors never leave the bridge (``common/bridge/``): it raises a :class:`BridgeError`
instead, a :class:`RedisUnavailable` (503) for the transient ones, with the Redis error as its
``__cause__``.
"""

from __future__ import annotations

from typing import Any


class DualplaneError(Exception):
    """Base of all dualplane errors."""

    #: The HTTP status the API answers with; 500 is never shaped (see the module docstring).
    status: int = 500
    #: The problem's ``title``: the same for every instance of a class, so clients may match it.
    title: str = "Internal Server Error"
    #: Seconds after which a retry may succeed: sent as ``Retry-After`` when set.
    retry_after_s: int | None = None

    def problem_detail(self) -> str:
        """The problem's ``detail``: this occurrence, in words."""
        return str(self)

    def problem_fields(self) -> dict[str, Any]:
        """Problem members beyond type, title, status and detail."""
        return {}

    def problem_headers(self) -> dict[str, str]:
        """Response headers the status asks for."""
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


# -- the families of the API's answers ------------------------------------------------------


class NotFound(DualplaneError):
    """The thing named does not exist, or the caller may not know that it does (HTTP 404)."""

    status = 404
    title = "Not found"


class Conflict(DualplaneError):
    """The request collides with the current state of what it names (HTTP 409)."""

    status = 409
    title = "Conflict"


class Unprocessable(DualplaneError):
    """A request that is well formed but cannot be done as sent (HTTP 422)."""

    status = 422
    title = "Unprocessable request"


class TooManyRequests(DualplaneError):
    """The caller went past a limit; ``retry_after_s`` says when it may try again (HTTP 429)."""

    status = 429
    title = "Too many requests"
    retry_after_s = 1


class Unavailable(DualplaneError):
    """A service dualplane depends on cannot be reached now (HTTP 503 with Retry-After)."""

    status = 503
    title = "Service unavailable"
    retry_after_s = 1
    #: The service, as the problem's detail names it.
    service = "the job store (Redis)"

    def problem_detail(self) -> str:
        return f"{self.service} is unavailable; retry shortly"


# -- errors of the bottom floors ------------------------------------------------------------


class GraphValidationError(Unprocessable):
    """A graph was rejected before anything was queued.

    ``node_errors`` maps a node id (or ``"_graph"`` for graph-wide problems) to a
    list of ``{"field": ..., "message": ...}`` entries.
    """

    title = "Invalid graph"

    def __init__(self, node_errors: dict[str, list[dict[str, Any]]]) -> None:
        self.node_errors = node_errors
        first = next(iter(node_errors.items()))
        super().__init__(f"invalid graph: {first[0]}: {first[1][0]['message']}")

    def problem_fields(self) -> dict[str, Any]:
        return {"node_errors": self.node_errors}


class UnknownJob(NotFound):
    """No job with that id (or it expired)."""

    title = "Unknown job"

    def problem_detail(self) -> str:
        return f"no job {self.args[0]!r}"


class BridgeError(DualplaneError):
    """A Redis call failed. One that is not :class:`RedisUnavailable` (a wrong type, a script's
    error) is a bug, answered as an internal fault (HTTP 500)."""


class RedisUnavailable(BridgeError, Unavailable):
    """Redis cannot answer now: a dropped or refused connection, a timeout, an exhausted pool, a
    server still loading its data or a replica not promoted yet (HTTP 503 with Retry-After)."""


class BridgeClosed(RedisUnavailable):
    """The bridge was used after close, or Redis went away."""


class PlaneFailed(DualplaneError):
    """A plane's consume loop died: the process reports it and exits non-zero, so that a
    supervisor starts a fresh one (its messages are reclaimed by the others meanwhile)."""


class ObjectNotFound(DualplaneError, ValueError):
    """No object under that key *for this job*: it does not exist, or it belongs to another
    user. Both read alike on purpose, so the error cannot tell whether someone else's key exists.
    A task's failure, not an API answer: the routes never read objects by a caller's key."""

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

    service = "the object store"


class NodeTimeout(DualplaneError):
    """One attempt of a node ran past its ``timeout_s``."""
