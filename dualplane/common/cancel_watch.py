"""The cancel watch: how a consumer learns that a job it holds was cancelled.

Requests are pushed on the ``cancels`` channel, so a running node stops within a step while the
event loop sleeps: a loop woken on a timer takes the GIL from a Python-bound task thread every
time (a 0.1 s flag poll cost generate_music several % in bench/gpu_tasks.py). The flags (the
truth) are also read every ``poll_s`` and right after each (re)subscription, for a request
published while the subscription was down. A pushed id for a job not held here is remembered
for :data:`RECENT_CANCEL_S`: its claim may be on the way, having read the flag just before the
request set it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualplane.common.bridge import Bridge
    from dualplane.common.bridge.subscriptions import CancelSubscription
    from dualplane.common.executor import JobRun

log = logging.getLogger("dualplane.cancel")

#: The flags of the jobs held are read this often (pushes are the fast path).
DEFAULT_CANCEL_POLL_S = 2.0
#: A pushed cancel for a job not held here is kept this long.
RECENT_CANCEL_S = 30.0


class CancelWatch:
    """Sets the cancel flag of every held run whose job's cancel was requested.

    :param bridge: a connected bridge.
    :param held: the runs the consumer holds now (called on every push and poll).
    :param name: the consumer's name, for the log.
    :param poll_s: how often the held jobs' flags are read.
    """

    def __init__(self, bridge: Bridge, held: Callable[[], Iterable[JobRun]], *, name: str,
                 poll_s: float = DEFAULT_CANCEL_POLL_S) -> None:
        self._bridge = bridge
        self._held = held
        self._name = name
        self._poll_s = poll_s
        self._recent: dict[str, float] = {}  # job id -> when its cancel was pushed

    def recently_cancelled(self, job_id: str) -> bool:
        """Whether a cancel of ``job_id`` was pushed in the last :data:`RECENT_CANCEL_S`."""
        return job_id in self._recent

    async def run(self, stopping: asyncio.Event) -> None:
        """Listen and poll until ``stopping`` is set (or the task is cancelled)."""
        subscription: CancelSubscription | None = None
        next_poll = 0.0
        try:
            while not stopping.is_set():
                try:
                    if subscription is None:
                        subscription = await self._bridge.subscribe_cancels()
                        next_poll = 0.0
                    wait_s = next_poll - time.monotonic()
                    if wait_s > 0:
                        job_id = await subscription.next_cancel(wait_s)
                        if job_id is not None:
                            self.pushed(job_id)
                        continue
                    next_poll = time.monotonic() + self._poll_s
                    await self._poll_flags()
                except Exception as exc:  # keep listening after a Redis hiccup
                    log.error("%s: cancel subscription failed: %s", self._name, exc)
                    if subscription is not None:
                        await subscription.aclose()
                    subscription = None
                    # ends on the stop flag, not only on cancellation: a client library that turns a
                    # cancellation into a connection error would otherwise leave this loop running
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), 1.0)
        finally:
            if subscription is not None:
                await subscription.aclose()

    def pushed(self, job_id: str) -> None:
        now = time.monotonic()
        self._recent[job_id] = now
        while self._recent:  # oldest first (insertion order)
            oldest, at = next(iter(self._recent.items()))
            if now - at < RECENT_CANCEL_S:
                break
            del self._recent[oldest]
        for run in self._held():
            if run.job_id == job_id:
                run.cancel.set()

    async def _poll_flags(self) -> None:
        runs = [r for r in self._held() if not r.cancel.is_set()]
        if runs:
            flagged = await self._bridge.cancel_flags([r.job_id for r in runs])
            for run in runs:
                if run.job_id in flagged:
                    run.cancel.set()
