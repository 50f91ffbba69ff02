"""Finds unfinished jobs whose stream entry is gone, and hands them on again.

Every unfinished job names the stream entry that carries it (``lane`` and ``msg`` in its hash,
written by the same script that adds the entry) and sits in the ``jobs:active`` index. An entry
can still vanish while its job stays: a failover to a replica that had not received it, an
eviction, an operator's XTRIM or DEL. Such a job would stay ``queued`` or ``running`` for ever;
the reconciler sees that its entry is missing and adds a new one (``requeue.lua``, which checks
again atomically that the job has not moved on and moves the fence, so a late owner cannot
write). Its nodes that had not finished run again; the ones that had, never.

It also notices when Redis lost all its data (the instance marker is gone): that is logged and
counted, since the jobs that were in it cannot be brought back from here.

Every control-plane replica may run it: the atomic check makes a second repair a no-op.

Its background passes check at most :data:`PASS_BUDGET` jobs each and go on from there the
next time, so its cost per interval stays bounded however many jobs are queued (a whole sweep
of a million active jobs is about 40 s of CPU here; checked in slices of 20,000, a pass is under
a second every interval, and a sweep takes 50 intervals). A one-off pass (``dualplane
reconcile``) sweeps everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from dualplane.common.bridge import Bridge
from dualplane.common.errors import BridgeError, UnknownJob
from dualplane.common.telemetry import PlaneMetrics

log = logging.getLogger("dualplane.reconciler")

PAGE = 500
#: Most active jobs a background pass checks (it resumes where the last one stopped).
PASS_BUDGET = 20_000


@dataclass
class Report:
    """What one pass found."""

    scanned: int = 0
    requeued: list[str] = field(default_factory=list)
    lost_data: bool = False


class Reconciler:
    """:param bridge: a connected bridge. :param interval_s: seconds between passes in :meth:`run`.
    :param metrics: where requeues and data losses are counted.
    :param marker_expected: a missing instance marker on the first pass means lost data too
        (a one-off pass against a deployment whose control plane set it); by default the
        first pass sets it."""

    def __init__(self, bridge: Bridge, *, interval_s: float, metrics: PlaneMetrics | None = None,
                 marker_expected: bool = False, pass_budget: int = PASS_BUDGET) -> None:
        self.bridge = bridge
        self.pass_budget = pass_budget
        #: Where the background sweep goes on from (None: from the start).
        self._cursor: tuple[float, str] | None = None
        self.interval_s = interval_s
        self._metrics = metrics
        self._marked = marker_expected
        self._stopping = asyncio.Event()
        self.passes = 0
        self.last: Report | None = None

    async def run(self) -> None:
        """A pass every ``interval_s`` until :meth:`stop`; a failed pass is logged and retried.

        It ends on the stop flag, not only on cancellation: redis-py can turn a cancellation
        into a connection error, which is caught here like any Redis hiccup."""
        while not self._stopping.is_set():
            try:
                self.last = await self.run_once(budget=self.pass_budget)
            except BridgeError as exc:
                log.warning("reconcile pass failed: %s", exc)
            except Exception:
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        self._stopping.set()

    async def run_once(self, *, repair: bool = True, budget: int | None = None) -> Report:
        """One pass: every active job, or (``budget``) at most that many from where the last
        budgeted pass stopped, wrapping round at the end of the index."""
        report = Report()
        if await self.bridge.mark_instance() and self._marked:
            report.lost_data = True
            if self._metrics is not None:
                self._metrics.redis_data_lost.inc()
            log.error("Redis lost its data (its instance marker is gone): every job it held is gone; "
                      "jobs submitted from now on run normally")
        self._marked = True
        after = self._cursor if budget is not None else None
        while page := await self.bridge.active_jobs(
                after=after, count=PAGE if budget is None else min(PAGE, budget - report.scanned)):
            after = (page[-1][1], page[-1][0])
            report.scanned += len(page)
            await self._check(page, report, repair=repair)
            if budget is not None and report.scanned >= budget:
                self._cursor = after
                break
        else:
            self._cursor = None  # the sweep reached the end: the next one starts over
        self.passes += 1
        return report

    async def _check(self, page: list[tuple[str, float]], report: Report, *, repair: bool) -> None:
        ids = [job_id for job_id, _ in page]
        positions = await self.bridge.handoff_positions(ids)
        known = [(job_id, pos) for job_id, pos in zip(ids, positions, strict=True) if pos is not None]
        present = await self.bridge.entries_exist([(pos[2], pos[3]) for _, pos in known])
        for (job_id, (_, handoff_seq, lane, entry_id)), there in zip(known, present, strict=True):
            if there:
                continue
            if not repair:
                report.requeued.append(job_id)
                continue
            try:
                job = await self.bridge.get_job(job_id)
            except UnknownJob:
                continue
            if job.handoff_seq != handoff_seq:
                continue  # it moved on since the page was read
            seq = await self.bridge.requeue(job, lane_stream=lane, entry_id=entry_id,
                                            reason=f"its message on {lane} was lost; handed on again")
            if seq > 0:
                report.requeued.append(job_id)
                if self._metrics is not None:
                    self._metrics.requeued.inc()
                log.warning("job %s: its message %s on %s was lost; handed on again", job_id, entry_id, lane)
