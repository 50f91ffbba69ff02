"""``GET /jobs``: newest-first listing with filters and an opaque cursor.

Jobs are indexed by creation time in a sorted set (all jobs, and one per user), written
by the same script that creates the job. A page walks the index newest-first, reads the
summaries of a slice in one round trip and filters them; the cursor is the
``created_at:id`` of the last job returned, so pages never repeat or skip a job even while
new jobs arrive. Ids of expired jobs met on the way are dropped from the index.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

from dualplane.common.bridge import Bridge
from dualplane.common.errors import DualplaneError
from dualplane.control_plane.limits import MAX_TIMESTAMP, valid_job_id

#: Index entries read per round trip while filling a page.
SCAN_SLICE = 200
#: A page stops scanning after this many index entries, returning a cursor to go on.
SCAN_LIMIT = 5000


@dataclass(frozen=True)
class JobFilter:
    """What to list. ``user`` None lists every user's jobs (admins and orchestrators only)."""

    user: str | None = None
    statuses: frozenset[str] = frozenset()
    task: str | None = None
    created_after: float | None = None
    created_before: float | None = None

    def matches(self, summary: dict[str, Any]) -> bool:
        return (not self.statuses or summary["status"] in self.statuses) and (
            self.task is None or self.task in summary["tasks"]
        )


@dataclass
class Page:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


class InvalidCursor(DualplaneError, ValueError):
    """The cursor was not produced by this API (HTTP 400)."""

    status = 400
    title = "Invalid cursor"


def encode_cursor(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(created_at, job id)`` of a cursor; anything :func:`encode_cursor` could not have
    written is an :class:`InvalidCursor` (its score goes to Redis as a range bound, where a
    NaN is a server error)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        text, job_id = raw.split(":", 1)
        score = float(text)
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
    if not (math.isfinite(score) and 0 <= score <= MAX_TIMESTAMP and valid_job_id(job_id)):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return score, job_id


async def list_jobs(bridge: Bridge, flt: JobFilter, *, limit: int, cursor: str | None) -> Page:
    """One page of jobs matching ``flt``, newest first."""
    max_score, after_id = (decode_cursor(cursor) if cursor else (flt.created_before, None))
    upper = repr(max_score) if max_score is not None else "+inf"
    lower = repr(flt.created_after) if flt.created_after is not None else "-inf"
    page = Page()
    scanned = 0
    while len(page.jobs) < limit and scanned < SCAN_LIMIT:
        rows = await bridge.job_page(flt.user, max_score=upper, min_score=lower, count=SCAN_SLICE)
        if after_id is not None and max_score is not None:  # skip what the last page returned
            rows = [(jid, sc) for jid, sc in rows if sc < max_score or jid < after_id]
        if not rows:
            return page
        summaries = await bridge.job_summaries([jid for jid, _ in rows])
        await bridge.forget_expired(flt.user, [jid for (jid, _), s in zip(rows, summaries, strict=False) if s is None])
        for (job_id, score), summary in zip(rows, summaries, strict=False):
            scanned += 1
            max_score, after_id = score, job_id
            if summary is not None and flt.matches(summary):
                page.jobs.append(summary)
                if len(page.jobs) == limit:
                    break
        upper = repr(max_score)
    page.next_cursor = encode_cursor(max_score, after_id) if max_score is not None and after_id else None
    return page
