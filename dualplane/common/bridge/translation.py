"""Redis's errors become dualplane's: the one place they are translated (:func:`translated`),
applied to every public coroutine of the facade (:func:`translating_errors`), to the batched
calls' results (:mod:`.batching`) and to the subscriptions and the lease keeper."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import redis
from redis.exceptions import BusyLoadingError, ReadOnlyError

from dualplane.common.errors import BridgeError, RedisUnavailable

#: Errors that mean "not now" rather than "never": a retry may succeed.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError, BusyLoadingError)

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type[Any])


def translated(exc: redis.RedisError) -> BridgeError:
    """The dualplane error of a Redis error; the caller raises it ``from exc``."""
    kind = RedisUnavailable if isinstance(exc, _TRANSIENT) else BridgeError
    return kind(f"redis: {exc}" if str(exc) else f"redis: {type(exc).__name__}")


def translating(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except redis.RedisError as exc:
            raise translated(exc) from exc

    return call


def translating_errors(cls: C) -> C:
    """Wrap every public coroutine method of ``cls`` (the facade, its mixins' included)."""
    for name in dir(cls):
        if not name.startswith("_") and inspect.iscoroutinefunction(getattr(cls, name)):
            setattr(cls, name, translating(getattr(cls, name)))
    return cls
