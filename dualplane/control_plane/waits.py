"""``?wait=`` without a Redis connection per waiting request.

A blocking read per waiting request held one pooled connection each: 120 waits of one user
emptied the pool and other users' reads failed. Here a wait is a future, resolved by the hub's
one Pub/Sub subscription when the job's final status event goes by (:meth:`FinishWaits.saw`);
the status is read once after the future is registered and the hub follows the job (on a
cluster it subscribes to the jobs it follows only), so an end that came first is not missed, and again after the hub re-subscribes, for one published while it was away. Each user
may hold ``max_per_user`` waits at once; past that the request gets a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable

from dualplane.common.errors import TooManyRequests
from dualplane.common.statuses import FINISHED as FINISHED_STATUSES
from dualplane.common.wire import is_final_event


class TooManyWaits(TooManyRequests):
    """A user already holds as many ``?wait=`` requests as allowed (HTTP 429)."""

    title = "Too many waits"


class FinishWaits:
    """:param job_status: ``async (job_id) -> status`` (None for a job that is gone).
    :param follow: ``async (job_id)``, returns once the job's events reach :meth:`saw`.
    :param unfollow: ``(job_id)``, once for each ``follow`` (even one that raised).
    :param max_per_user: concurrent waits one user may hold."""

    def __init__(self, job_status: Callable[[str], Awaitable[str | None]],
                 follow: Callable[[str], Awaitable[None]], unfollow: Callable[[str], None], *,
                 max_per_user: int) -> None:
        self._job_status = job_status
        self._follow = follow
        self._unfollow = unfollow
        self.max_per_user = max_per_user
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._per_user: Counter[str] = Counter()
        self._rechecks: set[asyncio.Task[None]] = set()

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._waiters

    async def wait(self, job_id: str, user: str | None, timeout_s: float) -> bool:
        """True once the job has finished, False when ``timeout_s`` ran out first."""
        who = user or ""
        if self._per_user[who] >= self.max_per_user:
            raise TooManyWaits(f"{self.max_per_user} waits at once at most; poll GET /jobs/<id> or follow "
                               "the job on the WebSocket")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        self._per_user[who] += 1
        try:
            await self._follow(job_id)
            if await self._job_status(job_id) in FINISHED_STATUSES:
                return True
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._unfollow(job_id)
            self._per_user[who] -= 1
            if not self._per_user[who]:
                del self._per_user[who]
            futures = self._waiters.get(job_id)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self._waiters[job_id]

    def saw(self, job_id: str, event: bytes) -> None:
        """An event of a waited-for job went by (the hub's dispatch loop)."""
        if is_final_event(event):
            self._finish(job_id)

    def recheck(self) -> None:
        """After a gap in the subscription: read the status of every waited-for job."""
        for job_id in list(self._waiters):
            task = asyncio.create_task(self._recheck(job_id))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, job_id: str) -> None:
        with contextlib.suppress(Exception):  # a failed read leaves the waits to their timeout
            if await self._job_status(job_id) in FINISHED_STATUSES:
                self._finish(job_id)

    def _finish(self, job_id: str) -> None:
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)
