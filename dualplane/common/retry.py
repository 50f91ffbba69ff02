"""Retry policy of a task: how many attempts, how long between them, which errors count."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dualplane.common.errors import TransientError

#: Exception types retried by default: network hiccups, timeouts and our own marker.
DEFAULT_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)
#: Class names retried even though they are RuntimeErrors (CUDA OOM is one, and
#: LangGraph's default policy would not retry it).
DEFAULT_TRANSIENT_NAMES = frozenset({"OutOfMemoryError"})


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA and other accelerators), told by name: the control
    plane does not import torch."""
    return type(exc).__name__ == "OutOfMemoryError"


@dataclass(frozen=True)
class Retry:
    """A task's retry policy.

    :param max_attempts: attempts in all, the first one included.
    :param backoff_s: wait before the second attempt.
    :param backoff_factor: multiplier for each later wait.
    :param max_backoff_s: cap on one wait.
    :param transient: exception types worth retrying; anything else fails the node at once.
    """

    max_attempts: int = 3
    backoff_s: float = 0.5
    backoff_factor: float = 2.0
    max_backoff_s: float = 30.0
    transient: tuple[type[BaseException], ...] = DEFAULT_TRANSIENT

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, self.transient) or type(exc).__name__ in DEFAULT_TRANSIENT_NAMES

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) failing with ``exc`` earns another one."""
        return attempt < self.max_attempts and self.is_transient(exc)

    def delay_s(self, attempt: int) -> float:
        """Wait after attempt number ``attempt`` failed: the one backoff formula (the executor
        sleeps this long between attempts; LangGraph retries nothing)."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** max(0, attempt - 1))


#: A policy that never retries.
NO_RETRY = Retry(max_attempts=1)
