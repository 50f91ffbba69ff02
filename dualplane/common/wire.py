"""The event wire format: an event's bytes in a job's events stream and on Pub/Sub.

Python writes an event as a JSON object *without* ``seq`` (:func:`event_body`) and hands it,
with its channel kind, to a mirroring script. The scripts' shared tail, ``lua/_events.lua``
(``append_events``), is the other half of this module and must stay in step with it:

* it takes the job's next seq and writes ``{"seq":<seq>,`` followed by the body without its
  opening brace — so every stored event *starts* with its seq (:func:`with_seq` is the same
  step in Python; :func:`seq_of` reads it back without parsing the JSON);
* it appends the event to ``job:<id>:events`` under the stream id ``<seq>-0``
  (:func:`stream_id`: ``since=`` needs no index) in the field ``e`` (:data:`EVENT_FIELD`);
* it PUBLISHes the same bytes on ``<prefix><kind>:<job id>``.

A job-level event carries no ``node_id`` (the writer leaves out None values), which is what
lets :func:`is_final_event` tell a node's status change from the job's without parsing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from dualplane.common.statuses import FINISHED

#: The stream field that holds an event's JSON.
EVENT_FIELD = b"e"
_SEQ_HEAD = b'{"seq":'


def event_body(kind: str, job_id: str, **fields: Any) -> tuple[str, bytes]:
    """An event ready for the scripts: (channel kind, JSON object without ``seq``); None
    values are left out."""
    # whole microseconds, as round(time.time(), 6) gives them, for a quarter of its cost
    body = {"job_id": job_id, "type": kind, "ts": time.time_ns() // 1000 / 1e6}
    body.update({k: v for k, v in fields.items() if v is not None})
    return kind, orjson.dumps(body)


def with_seq(body: bytes, seq: int) -> bytes:
    """The event as ``append_events`` stores and publishes it (the Lua does this; Python only
    for tests and tools)."""
    return b'{"seq":%d,' % seq + body[1:]


def seq_of(event: bytes) -> int:
    """The seq of a stored event: it starts with ``{"seq":N,`` (parsed JSON otherwise)."""
    if event.startswith(_SEQ_HEAD):
        end = event.find(b",", 7)
        if end > 7:
            return int(event[7:end])
    return int(orjson.loads(event)["seq"])


def stream_id(seq: int) -> str:
    """The events-stream entry id of the event with this seq."""
    return f"{int(seq)}-0"


def is_final_event(event: bytes) -> bool:
    """Whether a stored event is its job's terminal job-level status change."""
    if b'"node_id"' in event:
        return False
    return orjson.loads(event).get("status") in FINISHED
