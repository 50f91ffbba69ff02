"""Request limits of the API: body size and depth, graph size, params size, submission rate,
and the ranges of ids and numbers a request may name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request

from dualplane.common.bridge import Bridge
from dualplane.common.errors import DualplaneError, GraphValidationError, TooManyRequests
from dualplane.common.settings import LimitSettings
from dualplane.control_plane.json_depth import DeepSpot, locate, nesting_exceeds

#: Deepest nesting of arrays and objects in a JSON body. The parsers downstream stop at 200
#: levels (pydantic's, reading a handoff) and 254 (orjson), and a node's params sit about six
#: levels deeper in a handoff message than in the body; no task's params need more than a
#: handful of levels. 64 keeps a wide margin under both while allowing any sane document.
MAX_JSON_DEPTH = 64
#: Event seqs are integers every JSON client reads exactly (JavaScript numbers: 2^53).
MAX_SEQ = 2**53
#: Unix timestamps a filter may name: the year 5138 is far enough.
MAX_TIMESTAMP = 1e11
#: Job ids as graph.schema.json allows them; nothing else can name a job (nor a Redis key of one).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_job_id(job_id: str) -> bool:
    return JOB_ID.fullmatch(job_id) is not None


class TooLarge(DualplaneError):
    """A body larger than allowed (HTTP 413) or a body that is not JSON (HTTP 400)."""

    title = "Request too large"

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


class TooDeep(TooLarge):
    """A JSON body nested deeper than allowed (HTTP 422); ``spot`` says where, when known."""

    def __init__(self, limit: int, spot: DeepSpot | None) -> None:
        where = f" at {spot.pointer()}" if spot else ""
        super().__init__(f"JSON nests deeper than {limit} levels{where}", status=422)
        self.limit = limit
        self.spot = spot

    def node_errors(self, skip: int = 0) -> dict[str, list[dict[str, Any]]]:
        """The error scoped like a graph error: on the node the deep part is in (by id, else
        ``nodes[i]``), else on ``_graph``. ``skip`` drops a wrapper's leading path components
        (``graphs``, index of a batch)."""
        path = self.spot.path[skip:] if self.spot else ()
        ids = self.spot.ids[skip:] if self.spot else ()
        message = f"nests deeper than {self.limit} levels"
        if len(path) >= 2 and path[0] == "nodes" and isinstance(path[1], int):
            owner = (ids[2] if len(ids) > 2 else None) or f"nodes[{path[1]}]"  # ids[2]: the node's own
            return {owner: [{"field": str(path[2]) if len(path) > 2 else None, "message": message}]}
        return {"_graph": [{"field": str(path[0]) if path else None, "message": message}]}


class RateLimited(TooManyRequests):
    """The user submitted more than its rate allows (HTTP 429 with Retry-After)."""

    title = "Too many submissions"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    """:param max_body_bytes: request body cap. :param max_nodes: nodes per graph.
    :param max_params_bytes: JSON size of one node's params. :param submit_rate_per_min:
    submissions per user per minute (0: unlimited)."""

    max_body_bytes: int = 1024 * 1024
    max_nodes: int = 256
    max_params_bytes: int = 64 * 1024
    submit_rate_per_min: int = 600
    max_depth: int = MAX_JSON_DEPTH
    _window_s: int = field(default=60, repr=False)

    @classmethod
    def from_settings(cls, limits: LimitSettings) -> Limits:
        return cls(max_body_bytes=limits.max_body_bytes, max_nodes=limits.max_nodes,
                   max_params_bytes=limits.max_params_bytes, submit_rate_per_min=limits.submit_rate_per_min)

    async def read_bytes(self, request: Request, *, max_bytes: int | None = None) -> bytes:
        """The body, read no further than the limit (a lying Content-Length changes nothing)."""
        cap = max_bytes or self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise TooLarge(f"body of {declared} bytes is over the limit of {cap} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise TooLarge(f"body is over the limit of {cap} bytes")
        return bytes(body)

    async def read_json(self, request: Request, *, max_bytes: int | None = None) -> Any:
        """The body as JSON: 413 past the byte cap, 422 (:class:`TooDeep`) past the depth cap,
        400 when it does not parse."""
        body = await self.read_bytes(request, max_bytes=max_bytes)
        if nesting_exceeds(body, self.max_depth):
            raise TooDeep(self.max_depth, locate(body, self.max_depth))
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TooLarge(f"body is not valid JSON: {exc}", status=400) from None

    async def read_graph(self, request: Request) -> Any:
        """:meth:`read_json` for a graph body: too deep is a node-scoped graph error."""
        try:
            return await self.read_json(request)
        except TooDeep as exc:
            raise GraphValidationError(exc.node_errors()) from None

    def check_graph(self, document: Any) -> None:
        """Node count and per-node params size, as node-scoped graph errors."""
        if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
            return  # the schema validation reports it with the right location
        nodes = document["nodes"]
        if len(nodes) > self.max_nodes:
            raise GraphValidationError({"_graph": [{"field": "nodes", "message":
                                                    f"{len(nodes)} nodes; at most {self.max_nodes} allowed"}]})
        errors: dict[str, list[dict[str, Any]]] = {}
        for index, node in enumerate(nodes):
            if isinstance(node, dict) and "params" in node:
                size = len(orjson.dumps(node["params"]))
                if size > self.max_params_bytes:
                    owner = str(node.get("id") or f"nodes[{index}]")
                    errors.setdefault(owner, []).append({"field": "params", "message":
                                                         f"params are {size} bytes; at most {self.max_params_bytes}"})
        if errors:
            raise GraphValidationError(errors)

    async def admit(self, bridge: Bridge, user: str, amount: int = 1) -> None:
        """Count ``amount`` submissions for ``user``; raise :class:`RateLimited` past the rate."""
        if self.submit_rate_per_min <= 0:
            return
        count, retry_after_s = await bridge.count_submission(user, amount, self._window_s)
        if count > self.submit_rate_per_min:
            raise RateLimited(f"more than {self.submit_rate_per_min} submissions per minute for {user!r}",
                              retry_after_s)
