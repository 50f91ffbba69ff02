"""The event wire format (common/wire.py) against what the scripts' ``_events.lua`` writes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

from dualplane.common.bridge import Bridge
from dualplane.common.bridge.jobs import handoff_message
from dualplane.common.job_state import Mutation
from dualplane.common.models import Event, Graph, Handoff
from dualplane.common.settings import Settings
from dualplane.common.wire import EVENT_FIELD, event_body, is_final_event, seq_of, stream_id, with_seq


def test_python_side_of_the_layout() -> None:
    kind, body = event_body("status", "j1", node_id=None, status="succeeded", plane="python")
    assert kind == "status"
    assert b"node_id" not in body  # None values are left out: that is what marks a job-level event
    stored = with_seq(body, 12)
    assert stored.startswith(b'{"seq":12,')
    assert seq_of(stored) == 12
    assert orjson.loads(stored) == {**orjson.loads(body), "seq": 12}
    assert is_final_event(stored)
    assert not is_final_event(with_seq(event_body("status", "j1", node_id="a", status="failed")[1], 3))
    assert not is_final_event(with_seq(event_body("status", "j1", status="running")[1], 4))
    assert seq_of(orjson.dumps({"job_id": "j1", "seq": 7})) == 7  # not in the usual layout: parsed
    assert stream_id(5) == "5-0"


@pytest.mark.both_topologies
async def test_round_trip_through_the_scripts(settings: Settings, redis: Any, topology: str) -> None:
    """What Python writes, the scripts store and publish as :func:`with_seq` says, under ``<seq>-0``:
    on one Redis on each kind's channel, on a cluster on the job's sharded channel."""
    async with Bridge(settings.bridge_config()) as bridge:
        await redis.hset(bridge.keys.job("j1"), mapping={"id": "j1", "seq": 0})
        pubsub = redis.pubsub()
        if topology == "cluster":
            await pubsub.ssubscribe(bridge.keys.live_channel("j1"))
            read = pubsub.get_sharded_message
        else:
            await pubsub.psubscribe(bridge.keys.channel_pattern("*"))
            read = pubsub.get_message
        assert await read(timeout=1.0) is not None  # the subscription's confirmation
        sent = [event_body("progress", "j1", node_id="a", progress=0.5),
                event_body("status", "j1", status="succeeded", plane="python")]
        assert await bridge.emit("j1", Mutation(events=sent)) == 2
        entries = await redis.xrange(bridge.keys.events("j1"))
        assert [entry_id.decode() for entry_id, _ in entries] == [stream_id(1), stream_id(2)]
        stored = [fields[EVENT_FIELD] for _, fields in entries]
        assert stored == [with_seq(body, seq) for seq, (_, body) in enumerate(sent, 1)]
        assert [seq_of(event) for event in stored] == [1, 2]
        assert [Event.model_validate_json(event).seq for event in stored] == [1, 2]
        assert [is_final_event(event) for event in stored] == [False, True]
        published = []
        while len(published) < 2:
            message = await read(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                published.append((message["channel"].decode(), message["data"]))
            await asyncio.sleep(0)
        if topology == "cluster":
            assert published == [(bridge.keys.live_channel("j1"), event) for event in stored]
            assert key_slot(bridge.keys.live_channel("j1").encode()) == key_slot(bridge.keys.events("j1").encode())
        else:
            assert published == [(f"{bridge.keys.prefix}progress:j1", stored[0]),
                                 (f"{bridge.keys.prefix}status:j1", stored[1])]
        await pubsub.aclose()


def test_a_handoff_message_is_what_the_handoff_model_writes() -> None:
    graph = Graph.model_validate({"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": "é"}},
                                            {"id": "b", "task": "collect", "plane": "control", "needs": ["a"]}],
                                  "metadata": {"name": "x"}})
    spec = graph.model_dump_json(exclude_defaults=True).encode()
    for request_id, sent_by in ((None, None), ("req-1", None), (None, "submit"), ("req-2", "worker-1")):
        model = Handoff(job_id="j1", handoff_seq=3, graph=graph, request_id=request_id, sent_by=sent_by)
        made = handoff_message("j1", 3, spec, request_id, sent_by)
        assert made == model.model_dump_json(exclude_defaults=True).encode()
        assert Handoff.model_validate_json(made) == model
