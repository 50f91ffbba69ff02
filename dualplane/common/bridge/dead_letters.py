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
        """Park a message with its reason; fail its job, if known, so nobody waits on it."""
        job_id = job_id or ""
        # a poison message may hold bytes that are not UTF-8: kept readable, never a crash
        fields = {lenient_text(k): lenient_text(v) for k, v in message.fields.items()}
        await self._call(Call(
            "dead_letter",
            [self.keys.dead_stream, message.stream, self.keys.job(job_id), self.keys.events(job_id),
             self.keys.active_jobs],
            [self.keys.prefix, job_id, time.time(), self.keys.group_for_stream(message.stream), message.id,
             reason, orjson.dumps(fields), self.config.finished_job_ttl_s],
            dead_lettered(job_id, reason),
        ))

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
        still poison is dead-lettered again by the consumer that reads it."""
        entry = await self.dead_letter_entry(entry_id)
        if entry is None:
            return "gone", None
        stream, job_id = entry.get("stream", ""), entry.get("job", "")
        if not stream.startswith(self.keys.stream_prefix) or stream in (self.keys.dead_stream,
                                                                       self.keys.audit_stream):
            return "not-replayable", None
        message = orjson.loads(entry.get("fields") or "{}")
        handoff_seq = ""
        if job_id:
            (current,) = await self._redis.hmget(self.keys.job(job_id), ["handoff_seq"])
            if current is None:
                return "job-gone", None
            handoff_seq = text(current)
            message["m"] = _with_handoff_seq(message.get("m"), job_id, int(handoff_seq) + 1)
        pairs = [part for item in message.items() for part in item]
        code, value = await self._call(Call(
            "replay",
            [self.keys.dead_stream, stream, self.keys.job(job_id), self.keys.events(job_id), self.keys.active_jobs],
            [self.keys.prefix, job_id, time.time(), entry_id, handoff_seq, len(message), *pairs],
            replayed(job_id, entry_id, self.keys.lane_of_stream(stream)) if job_id else Mutation(),
        ))
        return ("replayed", text(value)) if int(code) == 1 else (text(value), None)

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
