"""The dead-letter stream (parked messages: list, discard, replay) and the audit stream of refusals."""

from __future__ import annotations

import time
from typing import Any

import orjson

from dualplane.common.bridge.batching import Call
from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.delivery import Message
from dualplane.common.bridge.replies import lenient_text, text
from dualplane.common.job_state import Mutation, dead_lettered, replayed

#: Refusals the audit stream keeps (about: it is trimmed with MAXLEN ~).
AUDIT_MAXLEN = 10_000


class DeadLetterOps(BridgeCore):
    async def dead_letter(self, message: Message, reason: str, job_id: str | None = None) -> None:
        """Park a message with its reason; fail its job, if known, so nobody waits on it.

        Two steps, since the dead-letter stream is a key of its own (one slot) and the message's
        stream and job share their partition's: :meth:`park` writes the entry, then
        :meth:`fail_parked` acknowledges the message and fails the job (dead_letter.lua says why a
        crash between them loses nothing and fails the job once)."""
        entry_id = await self.park(message, reason, job_id)
        await self.fail_parked(message, entry_id, reason, job_id)

    async def park(self, message: Message, reason: str, job_id: str | None = None) -> str:
        """The first step of :meth:`dead_letter`: the dead-letter entry (the message's copy, the
        reason); its id."""
        # a poison message may hold bytes that are not UTF-8: kept readable, never a crash
        fields = {lenient_text(k): lenient_text(v) for k, v in message.fields.items()}
        return text(await self._redis.xadd(self.keys.dead_stream, {
            "stream": message.stream, "id": message.id, "group": self.keys.group_for_stream(message.stream),
            "reason": reason, "job": job_id or "", "fields": orjson.dumps(fields), "ts": repr(time.time())}))

    async def fail_parked(self, message: Message, entry_id: str, reason: str, job_id: str | None = None) -> bool:
        """The second step of :meth:`dead_letter`: acknowledge the message and fail its job;
        True when the job was failed by it. A job whose partition is not the stream's (a message
        put on the wrong stream by hand) is left alone: the message cannot speak for it."""
        partition = self.keys.stream_partition(message.stream)
        if partition is None:
            partition = 0
        if not job_id or self.keys.partition(job_id) != partition:
            job_id = ""
        return bool(await self._call(Call(
            "dead_letter",
            [message.stream, self.keys.job(job_id) if job_id else self.keys.jobs_index(partition),
             self.keys.events(job_id) if job_id else self.keys.jobs_index(partition),
             self.keys.active_jobs(partition)],
            [self.keys.prefix, job_id, time.time(), self.keys.group_for_stream(message.stream), message.id,
             entry_id, self.config.finished_job_ttl_s],
            dead_lettered(job_id, reason) if job_id else Mutation(),
        )))

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        entries = await self._redis.xrange(self.keys.dead_stream, count=count)
        return [_entry(mid, fields) for mid, fields in entries]

    async def dead_letter_page(self, *, count: int, before: str | None = None) -> list[dict[str, str]]:
        """Dead letters newest first, older than the entry id ``before`` when given."""
        return await self._newest_first(self.keys.dead_stream, count=count, before=before)

    async def dead_letter_entry(self, entry_id: str) -> dict[str, str] | None:
        """One dead letter (its fields and ``entry``), None when there is none with that id."""
        rows = await self._redis.xrange(self.keys.dead_stream, entry_id, entry_id, count=1)
        return _entry(*rows[0]) if rows else None

    async def discard_dead_letter(self, entry_id: str) -> bool:
        """Delete a dead letter; False when there was none with that id."""
        return bool(await self._redis.xdel(self.keys.dead_stream, entry_id))

    async def replay_dead_letter(self, entry_id: str) -> tuple[str, str | None]:
        """Put a dead letter's message back on its source stream and make its job runnable again,
        undoing what dead-lettering did (``replay.lua``, one atomic step that also drops the dead
        letter). Returns ``("replayed", new entry id)``, or why not and None: ``gone`` (no such
        dead letter: replayed or discarded already), ``job-gone``, ``not-failed-by-it``, ``moved``.
        A message whose job is known is replayed with the job's next handoff_seq; one that is
        still poison is dead-lettered again by the consumer that reads it.

        Two steps: :meth:`requeue_dead_letter` (the job's side, one script), then the entry is
        deleted (replay.lua says why a crash in between runs nothing twice)."""
        outcome, new_id = await self.requeue_dead_letter(entry_id)
        if outcome == "replayed":
            await self._redis.xdel(self.keys.dead_stream, entry_id)
        return outcome, new_id

    async def requeue_dead_letter(self, entry_id: str) -> tuple[str, str | None]:
        """The first step of :meth:`replay_dead_letter`: the message back on its stream, its job
        revived; the entry stays."""
        entry = await self.dead_letter_entry(entry_id)
        if entry is None:
            return "gone", None
        stream, job_id = entry.get("stream", ""), entry.get("job", "")
        partition = self.keys.stream_partition(stream)
        if partition is None or (job_id and self.keys.partition(job_id) != partition):
            return "not-replayable", None
        message = orjson.loads(entry.get("fields") or "{}")
        if not job_id:  # a message nobody could read: back as it was (it is dead-lettered again)
            new_id = text(await self._redis.xadd(stream, message))
        else:
            (current,) = await self._redis.hmget(self.keys.job(job_id), ["handoff_seq"])
            if current is None:
                return "job-gone", None
            message["m"] = _with_handoff_seq(message.get("m"), job_id, int(current) + 1)
            pairs = [part for item in message.items() for part in item]
            code, value = await self._call(Call(
                "replay",
                [stream, self.keys.job(job_id), self.keys.events(job_id), self.keys.active_jobs(partition)],
                [self.keys.prefix, job_id, time.time(), entry_id, text(current), len(message), *pairs],
                replayed(job_id, entry_id, self.keys.lane_of_stream(stream)),
            ))
            if int(code) != 1:
                return text(value), None
            new_id = text(value)
        return "replayed", new_id

    async def record_refusal(self, fields: dict[str, Any], *, maxlen: int = AUDIT_MAXLEN) -> str:
        """Append a refused request to the audit stream (capped near ``maxlen``: the oldest go)."""
        values = {k: str(v) for k, v in fields.items() if v is not None}
        return text(await self._redis.xadd(self.keys.audit_stream, values, maxlen=maxlen, approximate=True))

    async def audit_page(self, *, count: int, before: str | None = None) -> list[dict[str, str]]:
        """Refusals newest first, older than the entry id ``before`` when given."""
        return await self._newest_first(self.keys.audit_stream, count=count, before=before)

    async def _newest_first(self, stream: str, *, count: int, before: str | None) -> list[dict[str, str]]:
        entries = await self._redis.xrevrange(stream, max=f"({before}" if before else "+", min="-", count=count)
        return [_entry(mid, fields) for mid, fields in entries]


def _entry(entry_id: Any, fields: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in fields.items()} | {"entry": text(entry_id)}


def _with_handoff_seq(raw: str | None, job_id: str, handoff_seq: int) -> str | None:
    """A dead-lettered handoff message of ``job_id`` made current again; anything else unchanged
    (a message that cannot be read stays what it was, and is dead-lettered again)."""
    try:
        message = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(message, dict) or message.get("job_id") != job_id:
        return raw
    return orjson.dumps({**message, "handoff_seq": handoff_seq}).decode()
