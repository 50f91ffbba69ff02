"""Request limits of the API: body size, graph size, params size, submission rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request

from dualplane.common.bridge import Bridge
from dualplane.common.errors import DualplaneError, GraphValidationError
from dualplane.common.settings import Settings


class TooLarge(DualplaneError):
    """A body larger than allowed (HTTP 413) or a body that is not JSON (HTTP 400)."""

    def __init__(self, message: str, status: int = 413, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


class RateLimited(DualplaneError):
    """The user submitted more than its rate allows (HTTP 429 with Retry-After)."""

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
    _window_s: int = field(default=60, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_body_bytes=settings.max_body_bytes, max_nodes=settings.max_nodes,
                   max_params_bytes=settings.max_params_bytes, submit_rate_per_min=settings.submit_rate_per_min)

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
        body = await self.read_bytes(request, max_bytes=max_bytes)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TooLarge(f"body is not valid JSON: {exc}", status=400) from None

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
