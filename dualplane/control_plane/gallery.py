"""``GET /outputs``: every artifact of a user's jobs as a gallery, newest first, by kind.

Jobs are walked newest first through the user's job index (like ``GET /jobs``); within a job the
nodes that finished last come first, and a node's artifacts video first, then audio, images and
text, by name within a kind (a node writes its files concurrently, so the order they were
recorded in says nothing). The cursor names the last job looked at and how many of its
outputs were returned, so a page may end in the middle of a job. Only media a person looks at is
listed: audio, video, images and text; model weights and other binaries are not outputs here.
"""

from __future__ import annotations

import asyncio
import base64
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.bridge import Bridge
from dualplane.common.errors import UnknownJob
from dualplane.common.models import Job, Node
from dualplane.control_plane.limits import MAX_TIMESTAMP, valid_job_id
from dualplane.control_plane.listing import InvalidCursor

OutputKind = Literal["audio", "video", "image", "text"]
#: The order of a node's outputs by kind: the finished video before its soundtrack and poster.
_KIND_ORDER = {"video": 0, "audio": 1, "image": 2, "text": 3}
#: Jobs read per round trip while filling a page.
JOB_SLICE = 50
#: A page stops after looking at this many jobs, returning a cursor to go on.
SCAN_JOBS = 1000
#: How long the served URLs are valid.
URL_S = 3600
_TEXT_TYPES = frozenset({"application/json", "application/x-subrip"})
#: A cursor's count of a job's outputs returned when all of them were.
_WHOLE = 2**31 - 1


def kind_of(content_type: str) -> OutputKind | None:
    """The gallery kind of a content type (None: not an output a person looks at)."""
    major = content_type.split("/", 1)[0].lower()
    if major in ("audio", "video", "image", "text"):
        return major  # type: ignore[return-value]
    return "text" if content_type.split(";", 1)[0].strip().lower() in _TEXT_TYPES else None


@dataclass
class OutputPage:
    outputs: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


def encode_cursor(created_at: float, job_id: str, done: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}:{job_id}:{done}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str, int]:
    """``(created_at, job id, outputs of it already returned)``; :class:`InvalidCursor` for
    anything :func:`encode_cursor` could not have written."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        text, job_id, done_text = raw.split(":", 2)
        score, done = float(text), int(done_text)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
    if not (math.isfinite(score) and 0 <= score <= MAX_TIMESTAMP and valid_job_id(job_id) and 0 <= done <= _WHOLE):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return score, job_id, done


async def list_outputs(bridge: Bridge, store: ArtifactStore, user: str, *, kind: OutputKind | None, limit: int,
                       cursor: str | None) -> OutputPage:
    """One page of ``user``'s outputs, newest first."""
    max_score, at_id, done = decode_cursor(cursor) if cursor else (None, None, 0)
    page = OutputPage()
    scanned = 0
    while scanned < SCAN_JOBS:
        read = await bridge.job_page(user, max_score=repr(max_score) if max_score is not None else "+inf",
                                     min_score="-inf", count=JOB_SLICE)
        # the last job looked at comes again (its outputs past `done`), then the older ones
        rows = [(jid, sc) for jid, sc in read if at_id is None or max_score is None or sc < max_score or jid <= at_id]
        scanned += len(read)  # what was read, not kept: ties past a slice's size still end the scan
        jobs = await asyncio.gather(*(_job(bridge, jid) for jid, _ in rows))
        for (job_id, score), job in zip(rows, jobs, strict=True):
            skip = done if job_id == at_id else 0
            outputs = _outputs(job, kind) if job is not None else []
            room = limit - len(page.outputs)
            taken = outputs[skip:skip + room]
            page.outputs += [await _served(store, job, item) for item in taken if job is not None]
            max_score, at_id, done = score, job_id, skip + len(taken)
            if len(page.outputs) == limit:
                page.next_cursor = encode_cursor(score, job_id, done)
                return page
        if len(read) < JOB_SLICE:  # the index ends here
            return page
        done = _WHOLE  # every job of the slice was read whole: the next slice starts after the last one
    page.next_cursor = encode_cursor(max_score, at_id, done) if max_score is not None and at_id else None
    return page


async def _job(bridge: Bridge, job_id: str) -> Job | None:
    try:
        return await bridge.get_job(job_id)
    except UnknownJob:  # expired or purged since the index was read
        return None


@dataclass(frozen=True)
class _Output:
    node: Node
    index: int  # of the artifact in its node
    kind: OutputKind


def _outputs(job: Job, kind: OutputKind | None) -> list[_Output]:
    nodes = sorted(job.graph.nodes, key=lambda n: n.finished_at or 0.0, reverse=True)
    found = []
    for node in nodes:
        mine = [_Output(node, index, found_kind) for index, ref in enumerate(node.artifacts)
                if (found_kind := kind_of(ref.content_type)) is not None and (kind is None or found_kind == kind)]
        found += sorted(mine, key=lambda o: (_KIND_ORDER[o.kind], node.artifacts[o.index].name))
    return found


async def _served(store: ArtifactStore, job: Job, item: _Output) -> dict[str, Any]:
    ref = item.node.artifacts[item.index]
    output = item.node.output if isinstance(item.node.output, dict) else {}
    duration = output.get("duration_s")
    poster = _poster(job, item.node) if item.kind == "video" else None
    return {
        "job_id": job.id, "job_name": job.name, "node_id": item.node.id, "task": item.node.task, "name": ref.name,
        "kind": item.kind, "content_type": ref.content_type, "size": ref.size,
        "duration_s": float(duration) if item.kind in ("audio", "video") and _is_number(duration) else None,
        "url": await store.presigned_url(ref.key, URL_S),
        "poster_url": await store.presigned_url(poster, URL_S) if poster else None,
        "created_at": item.node.finished_at or job.finished_at or job.created_at,
    }


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _poster(job: Job, node: Node) -> str | None:
    """The key of a video's poster: the one its node's output names, else an image named
    ``poster.*`` of its node, else of its job (a mux node's poster is its own)."""
    images = {ref.key: ref for n in job.graph.nodes for ref in n.artifacts if kind_of(ref.content_type) == "image"}
    named = (node.output or {}).get("poster") if isinstance(node.output, dict) else None
    if isinstance(named, str) and named in images:
        return named
    for candidates in (node.artifacts, [ref for n in job.graph.nodes for ref in n.artifacts]):
        for ref in candidates:
            if ref.key in images and ref.name.startswith("poster."):
                return ref.key
    return None
