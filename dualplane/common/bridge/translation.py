"""Redis's errors become dualplane's: the one place they are translated (:func:`translated`),
applied to every public coroutine of the facade (:func:`translating_errors`), to the batched
calls' results (:mod:`.batching`) and to the subscriptions and the lease keeper."""

from __future__ import annotations

import functools
import inspect
import os
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


_REDIS_PACKAGE = os.path.dirname(redis.__file__) + os.sep


def torn_connection(exc: BaseException) -> redis.ConnectionError | None:
    """A ConnectionError for an AttributeError raised inside redis-py's own connection code: its
    cluster client disconnects a node's idle connections after an error (a failover), and one
    that a command took in the meantime loses its socket mid-write (``_writer`` is None). The
    command may or may not have been sent: to its caller that is a lost connection. None for
    anything else."""
    if not isinstance(exc, AttributeError) or exc.__traceback__ is None:
        return None
    frame = exc.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    if not frame.tb_frame.f_code.co_filename.startswith(_REDIS_PACKAGE):
        return None
    lost = redis.ConnectionError(f"the connection was closed under a command ({exc})")
    lost.__cause__ = exc
    return lost


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
        except AttributeError as exc:
            if (lost := torn_connection(exc)) is None:
                raise
            raise translated(lost) from exc

    return call


def translating_errors(cls: C) -> C:
    """Wrap every public coroutine method of ``cls`` (the facade, its mixins' included)."""
    for name in dir(cls):
        if not name.startswith("_") and inspect.iscoroutinefunction(getattr(cls, name)):
            setattr(cls, name, translating(getattr(cls, name)))
    return cls
