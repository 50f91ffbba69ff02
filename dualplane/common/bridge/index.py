"""The job indexes: the active set the reconciler walks (and its requeue), the listing pages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dualplane.common.bridge.batching import Call
from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.replies import text
from dualplane.common.job_state import requeued
from dualplane.common.models import Handoff, Job

_SUMMARY_FIELDS = ["id", "status", "user", "tasks", "progress", "created_at", "finished_at", "request_id", "name"]


class IndexOps(BridgeCore):
    # -- reconciliation (control_plane/reconciler.py) -----------------------------------

    async def mark_instance(self) -> bool:
        """Set the instance marker if it is missing; True when it was (a new or emptied Redis)."""
        return bool(await self._redis.set(self.keys.instance, str(time.time()), nx=True))

    async def active_jobs(self, *, after: tuple[float, str] | None, count: int) -> list[tuple[str, float]]:
        """Unfinished jobs of every partition, oldest first, after ``(created_at, id)``."""
        low = "-inf" if after is None else repr(after[0])
        pipe = self._redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zrange(self.keys.active_jobs(partition), low, "+inf", byscore=True, offset=0,
                        num=count + 64, withscores=True)
        out = sorted((float(score), text(member)) for rows in await pipe.execute() for member, score in rows)
        if after is not None:  # ids sharing the last score may repeat: skip what was seen
            out = [(t, j) for t, j in out if (t, j) > after]
        return [(j, t) for t, j in out[:count]]

    async def handoff_positions(self, job_ids: Sequence[str]) -> list[tuple[str, int, str, str] | None]:
        """(status, handoff_seq, lane stream, entry id) of each job; None where the job is gone
        or names no entry."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), ["status", "handoff_seq", "lane", "msg"])
        out: list[tuple[str, int, str, str] | None] = []
        for status, handoff_seq, lane, msg in await pipe.execute():
            if status is None or not lane or not msg:
                out.append(None)
            else:
                out.append((text(status), int(handoff_seq or 0), text(lane), text(msg)))
        return out

    async def entries_exist(self, entries: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether each (stream, entry id) is still in its stream."""
        pipe = self._redis.pipeline(transaction=False)
        for stream, entry_id in entries:
            pipe.xrange(stream, entry_id, entry_id, count=1)
        return [bool(rows) for rows in await pipe.execute()]

    async def requeue(self, job: Job, *, lane_stream: str, entry_id: str, reason: str) -> int:
        """Hand ``job`` on again on ``lane_stream`` when its entry ``entry_id`` is really gone
        and the job has not moved on (checked atomically). Returns the last seq, 0 when nothing
        was done, -2 when the job is gone."""
        message = Handoff(job_id=job.id, handoff_seq=job.handoff_seq + 1, graph=job.graph,
                          request_id=job.request_id, sent_by="reconciler").model_dump_json(exclude_defaults=True)
        return int(await self._call(Call(
            "requeue",
            [self.keys.job(job.id), self.keys.events(job.id), lane_stream,
             self.keys.active_jobs(self.keys.partition(job.id))],
            [self.keys.prefix, job.id, time.time(), job.handoff_seq, entry_id, message],
            requeued(job.id, reason),
        )))

    # -- listing (control_plane/listing.py) ---------------------------------------------

    def _index(self, user: str | None, partition: int) -> str:
        return self.keys.user_jobs(user, partition) if user else self.keys.jobs_index(partition)

    async def job_page(self, user: str | None, *, max_score: str, min_score: str,
                       count: int) -> list[tuple[str, float]]:
        """Newest-first ids (with their created_at) of a user's jobs (every job when ``user`` is
        None), by score range: the partitions' pages merged, ties newest id first as in one
        sorted set."""
        pipe = self._redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zrange(self._index(user, partition), max_score, min_score, desc=True, byscore=True, offset=0,
                        num=count, withscores=True)
        rows = sorted(((float(score), text(member)) for page in await pipe.execute() for member, score in page),
                      reverse=True)
        return [(job_id, score) for score, job_id in rows[:count]]

    async def job_summaries(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Summary fields of many jobs in one round trip; None for jobs that expired."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), _SUMMARY_FIELDS)
        out: list[dict[str, Any] | None] = []
        for values in await pipe.execute():
            if values[0] is None:
                out.append(None)
                continue
            row = dict(zip(_SUMMARY_FIELDS, (text(v) if v is not None else None for v in values), strict=False))
            out.append({
                "id": row["id"], "status": row["status"], "user": row["user"],
                "tasks": row["tasks"].split(",") if row["tasks"] else [],
                "progress": float(row["progress"] or 0), "created_at": float(row["created_at"] or 0),
                "finished_at": float(row["finished_at"]) if row["finished_at"] else None,
                "request_id": row["request_id"], "name": row["name"],
            })
        return out

    async def job_counts(self) -> tuple[int, int]:
        """(jobs indexed, unfinished jobs)."""
        pipe = self._redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zcard(self.keys.jobs_index(partition))
            pipe.zcard(self.keys.active_jobs(partition))
        counts = [int(n) for n in await pipe.execute()]
        return sum(counts[0::2]), sum(counts[1::2])

    async def forget_expired(self, user: str | None, job_ids: Sequence[str]) -> None:
        """Drop ids whose job expired from the index they were listed from."""
        if job_ids:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.zrem(self._index(user, self.keys.partition(job_id)), job_id)
            await pipe.execute()
