"""Job state: create, claim, emit, hand on, read (the job, its fields, its events), wait, delete.

Every write of a job is one Lua script, batched (:mod:`.batching`); ``fence`` is the writer's
ownership token from its claim, checked by the script.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import WatchError

from dualplane.common.bridge.batching import Call
from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.delivery import Message
from dualplane.common.bridge.keys import node_field
from dualplane.common.bridge.replies import text
from dualplane.common.errors import UnknownJob
from dualplane.common.graph import EXTERNAL_LANE
from dualplane.common.job_state import Mutation
from dualplane.common.models import Event, Graph, Job
from dualplane.common.statuses import FINISHED
from dualplane.common.wire import EVENT_FIELD, is_final_event, stream_id

#: Longest single blocking read: well under redis-py's default 5 s socket timeout.
MAX_BLOCK_MS = 2000


@dataclass(frozen=True)
class Claim:
    """What the job hash says when a handoff arrives: ``ok`` false means stale or gone.
    ``fence`` is the claimant's ownership token: every write it makes is checked against it."""

    ok: bool
    gone: bool = False
    status: str = ""
    cancel_requested: bool = False
    node_states: dict[str, dict[str, Any]] | None = None
    created_at: float | None = None
    user: str | None = None
    fence: int = 0


@dataclass(frozen=True)
class Created:
    """What :meth:`JobOps.create_job` did: ``created`` False when the id existed already
    (``status`` is then that job's); ``stored`` is the new job's hash as the create script left
    it (:func:`job_from_hash` makes the job of it, when an answer needs one)."""

    created: bool
    status: str
    stored: dict[str, Any] | None


class JobOps(BridgeCore):
    async def create_job(
        self,
        job_id: str,
        graph: Graph,
        change: Mutation,
        *,
        lane: str,
        request_id: str | None,
        user: str | None = None,
    ) -> Created:
        """Store a new job (``change``: what :func:`~dualplane.common.job_state.submit` made of it)
        with its graph as ``spec``, and hand it to ``lane``; for an id that already exists,
        nothing is written and its status comes back."""
        spec = graph.model_dump_json(exclude_defaults=True).encode()
        change.fields["spec"] = spec
        partition = self.keys.partition(job_id)
        index = self.keys.jobs_index(partition)
        now = time.time()
        reply = await self._call(Call(
            "create",
            [self.keys.job(job_id), self.keys.events(job_id), self.keys.lane_stream(lane, partition), index,
             self.keys.user_jobs(user, partition) if user else index, self.keys.active_jobs(partition)],
            [self.keys.prefix, job_id, now, handoff_message(job_id, 1, spec, request_id, "submit")],
            change,
        ))
        if int(reply[0]) != 1:
            return Created(False, text(reply[1]), None)
        # what create.lua left in the hash (set_fields, its own HSETs, append_events), so the
        # submission's answer needs no read back
        stored: dict[str, Any] = {**change.fields, **{node_field(n): state for n, state in change.nodes.items()},
                                  "handoff_seq": 1, "seq": int(reply[1]), "created_at": now, "updated_at": now}
        return Created(True, str(stored["status"]), stored)

    async def claim(self, job_id: str, handoff_seq: int) -> Claim:
        return parse_claim(await self.claim_nowait(job_id, handoff_seq))

    def claim_nowait(self, job_id: str, handoff_seq: int) -> asyncio.Future[Any]:
        """The raw claim reply, batched with this tick's other calls (see :func:`parse_claim`);
        gathering these futures costs no task per message."""
        return self._call(Call("claim", [self.keys.job(job_id)], [handoff_seq]))

    async def emit(self, job_id: str, change: Mutation, *, fence: int | None = None) -> int:
        """Write a change of a job (node states, fields, events) in one atomic step. ``fence``
        is the caller's ownership token (from its claim); a stale owner gets -1 and changes nothing."""
        return int(await self.emit_nowait(job_id, change, fence=fence))

    def emit_nowait(self, job_id: str, change: Mutation, *, fence: int | None = None) -> asyncio.Future[Any]:
        """:meth:`emit` without waiting: queued in this tick's pipeline, in call order."""
        return self._call(Call(
            "emit",
            [self.keys.job(job_id), self.keys.events(job_id)],
            [self.keys.prefix, job_id, "" if fence is None else fence, time.time()],
            change, merge_key=(job_id, fence),
        ))

    async def handoff(self, job_id: str, **kwargs: Any) -> int:
        """Hand the full graph to ``target_lane`` (or finish the job when it is None) and
        acknowledge ``source``, atomically. Returns the last seq, -1 if stale, -2 if gone."""
        return int(await self.handoff_nowait(job_id, **kwargs))

    def handoff_nowait(
        self,
        job_id: str,
        *,
        expected_seq: int,
        fence: int | None,
        source: Message | None,
        target_lane: str | None,
        graph: Graph,
        request_id: str | None,
        sent_by: str,
        change: Mutation,
    ) -> asyncio.Future[Any]:
        """:meth:`handoff` without waiting; merged with the job's last emit when adjacent.
        ``change`` is what the hand-on writes (:meth:`~dualplane.common.job_state.JobState.hand_on`)."""
        message = b""
        target = ""
        if target_lane == EXTERNAL_LANE:  # no stream: the job waits for external workers' claims
            message = b"external"
        elif target_lane is not None:
            target = self.keys.stream_for_job(target_lane, job_id)
            message = handoff_message(job_id, expected_seq + 1, graph.model_dump_json(exclude_defaults=True).encode(),
                                      request_id, sent_by)
        src_stream = source.stream if source else self.keys.stream_for_job("control", job_id)
        return self._call(Call(
            "handoff",
            [self.keys.job(job_id), self.keys.events(job_id), src_stream, target or src_stream,
             self.keys.active_jobs(self.keys.partition(job_id))],
            [self.keys.prefix, job_id, expected_seq, time.time(), self.keys.group_for_stream(src_stream),
             source.id if source else "", message, self.config.finished_job_ttl_s,
             "" if fence is None else fence],
            change, merge_key=(job_id, fence),
        ))

    async def job_and_raw_state(self, job_id: str, node_id: str) -> tuple[Job, bytes | None]:
        """The job and one node's state as stored (the value an external write compares with)."""
        fields = await self._job_hash(job_id)
        return job_from_hash(fields), fields.get(node_field(node_id))

    async def external_write(
        self,
        job_id: str,
        node_id: str,
        *,
        token: int | None,
        lease_s: float | None,
        expected_state: bytes,
        change: Mutation,
    ) -> tuple[int, float | None]:
        """An external worker's claim (``token`` None; a lease of ``lease_s``) or report (with its
        ``token``; ``lease_s`` None ends the claim, anything else renews it) on a node of a job
        that waits on external workers (see external.lua). Returns (token, the lease's deadline
        or None once ended), or (code, None) with code -1 held or stale, -2 gone, -3 the job does
        not wait on external workers, -4 the node's state changed since it was read."""
        if token is None:
            op, lease = "claim", repr(lease_s)
        else:
            op, lease = "report", "" if lease_s is None else "1"
        reply = await self._call(Call(
            "external",
            [self.keys.job(job_id), self.keys.events(job_id)],
            [self.keys.prefix, job_id, node_id, op, "" if token is None else token, repr(time.time()), lease,
             expected_state],
            change,
        ))
        code = int(reply[0])
        return code, (float(reply[2]) if code > 0 and reply[2] else None)

    async def job_status(self, job_id: str) -> str:
        """The job's status; :class:`UnknownJob` when there is no such job."""
        status = await self._redis.hget(self.keys.job(job_id), "status")
        if status is None:
            raise UnknownJob(job_id)
        return text(status)

    async def get_job(self, job_id: str) -> Job:
        return job_from_hash(await self._job_hash(job_id))

    async def _job_hash(self, job_id: str) -> dict[str, bytes]:
        key = self.keys.job(job_id)
        raw = await self._command(key, "HGETALL", key)
        if not raw:
            raise UnknownJob(job_id)
        if isinstance(raw, dict):  # a RESP3 connection answers with a map
            return {text(k): v for k, v in raw.items()}
        return {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}

    async def events(self, job_id: str, since: int = 0, count: int | None = None) -> list[Event]:
        """Events with ``seq > since``, in order, from the events stream (the truth)."""
        return [Event.model_validate_json(raw) for raw in await self.raw_events(job_id, since, count=count)]

    async def raw_events(self, job_id: str, since: int = 0, *, upto: int | None = None,
                         count: int | None = None) -> list[bytes]:
        """At most ``count`` stored events (JSON) with ``since`` < seq <= ``upto`` (the last
        when None), in order: a replay, a gap fill, a page of the events route."""
        entries = await self._redis.xrange(self.keys.events(job_id), min=stream_id(since + 1),
                                           max="+" if upto is None else stream_id(upto), count=count)
        return [fields[EVENT_FIELD] for _, fields in entries]

    async def job_fields(self, job_id: str, *names: str) -> list[str | bytes | None]:
        """A few raw fields of a job's hash ("user" and "tasks" come back as str)."""
        values = await self._redis.hmget(self.keys.job(job_id), list(names))
        return [text(v) if v is not None and n in ("user", "tasks", "status") else v
                for n, v in zip(names, values, strict=False)]

    async def job_owner(self, job_id: str) -> str | None:
        """The user of a job (None for one without); :class:`UnknownJob` when there is no such job.
        Every access check asks this (the hub, object reads, the routes)."""
        exists, user = await self._redis.hmget(self.keys.job(job_id), ["id", "user"])
        if exists is None:
            raise UnknownJob(job_id)
        return text(user) if user else None

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job:
        """The job once its terminal job-level event is in its stream, or as it is after the
        timeout. A job that has finished is one read (HGETALL); otherwise the events stream is
        read from the seq that read saw (XREAD BLOCK), so nothing published meanwhile is missed."""
        fields = await self._job_hash(job_id)
        if text(fields["status"]) in FINISHED:
            return job_from_hash(fields)
        last = stream_id(int(fields.get("seq", 0)))
        deadline = time.monotonic() + timeout_s
        while (remaining_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            # blocks in slices: the client's socket timeout (5 s by default) must not cut a read
            reply = await self._redis.xread({self.keys.events(job_id): last}, count=100,
                                            block=min(remaining_ms, MAX_BLOCK_MS))
            if any(is_final_event(fields[EVENT_FIELD]) for _, entries in reply or [] for _, fields in entries):
                break
            for _, entries in reply or []:
                last = entries[-1][0]
        return await self.get_job(job_id)

    async def rename_job(self, job_id: str, name: str, *, attempts: int) -> bool | None:
        """Set a job's name in its spec and its ``name`` field together: True when renamed, False
        when the job is gone, None when the hash kept changing for ``attempts`` tries.

        The spec is read, changed and written back under WATCH: a job whose progress events write
        to its hash meanwhile is tried again, and a job purged meanwhile is not brought back."""
        key = self.keys.job(job_id)
        async with self._transaction_client(key).pipeline(transaction=True) as pipe:
            for _ in range(attempts):
                try:
                    await pipe.watch(key)
                    spec = await pipe.hget(key, "spec")
                    if spec is None:
                        return False
                    graph = orjson.loads(spec)
                    graph.setdefault("metadata", {})["name"] = name
                    pipe.multi()
                    pipe.hset(key, mapping={"spec": orjson.dumps(graph), "name": name})
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        return None

    async def delete_job(self, job_id: str, user: str | None) -> None:
        partition = self.keys.partition(job_id)
        # every key here is in the job's partition
        pipe = self._transaction_client(self.keys.job(job_id)).pipeline(transaction=True)
        pipe.delete(self.keys.job(job_id), self.keys.events(job_id))
        pipe.zrem(self.keys.jobs_index(partition), job_id)
        pipe.zrem(self.keys.active_jobs(partition), job_id)
        if user:
            pipe.zrem(self.keys.user_jobs(user, partition), job_id)
        await pipe.execute()


def handoff_message(job_id: str, handoff_seq: int, graph_json: bytes, request_id: str | None,
                    sent_by: str | None) -> bytes:
    """A handoff's stream entry: what ``Handoff(...).model_dump_json(exclude_defaults=True)``
    writes, around a graph serialised already (a submission stores the same bytes as the
    job's spec: one serialisation for both)."""
    head = orjson.dumps({"job_id": job_id, "handoff_seq": handoff_seq})
    tail = {name: value for name, value in (("request_id", request_id), ("sent_by", sent_by)) if value is not None}
    return head[:-1] + b',"graph":' + graph_json + (b"," + orjson.dumps(tail)[1:] if tail else b"}")


def parse_claim(reply: Any) -> Claim:
    """Decode a claim script reply."""
    code = int(reply[0])
    if code == -2:
        return Claim(ok=False, gone=True)
    if code == -1:
        return Claim(ok=False)
    states = {text(reply[i]): orjson.loads(reply[i + 1]) for i in range(6, len(reply), 2)}
    return Claim(ok=True, status=text(reply[1]), cancel_requested=bool(reply[2]), node_states=states,
                 created_at=float(reply[3]) if reply[3] else None, user=text(reply[4]) or None,
                 fence=int(reply[5]))


def job_from_hash(raw: dict[str, Any]) -> Job:
    """Assemble a :class:`Job` from its hash: the spec, overlaid with every node's state."""
    graph = orjson.loads(raw["spec"])
    for node in graph["nodes"]:
        state = raw.get(node_field(node["id"]))
        if state is not None:
            node.update(orjson.loads(state))
    job = {
        "id": text(raw["id"]),
        "status": text(raw["status"]),
        "graph": graph,
        "owner": text(raw.get("owner", b"control")),
        "handoff_seq": int(raw.get("handoff_seq", 0)),
        "seq": int(raw.get("seq", 0)),
        "progress": float(raw.get("progress", 0) or 0),
        "request_id": text(raw["request_id"]) if raw.get("request_id") else None,
        "user": text(raw["user"]) if raw.get("user") else None,
        "cancel_requested": bool(raw.get("cancel")),
        "created_at": float(raw["created_at"]),
        "updated_at": float(raw["updated_at"]) if raw.get("updated_at") else None,
        "finished_at": float(raw["finished_at"]) if raw.get("finished_at") else None,
        "error": text(raw["error"]) if raw.get("error") else None,
        "name": graph.get("metadata", {}).get("name"),
    }
    return Job.model_validate(job)
