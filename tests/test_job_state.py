"""The job state machine (common/job_state.py), pure, and the copies of its status sets that
code outside Python keeps (Lua, the web UI's JavaScript)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson

from dualplane.common.graph import validate_graph
from dualplane.common.job_state import JOB_CANCELLED, JobState, Mutation, dead_lettered, request_cancel, submit
from dualplane.common.models import Graph, JobStatus, NodeStatus
from dualplane.common.statuses import FINISHED, SATISFIED, TERMINAL
from dualplane.tasks import default_registry

PACKAGE = Path(__file__).resolve().parents[1] / "dualplane"
REGISTRY = default_registry()


def _graph(*nodes: dict[str, Any]) -> Graph:
    graph = validate_graph({"nodes": list(nodes)}, REGISTRY)
    graph.metadata["name"] = "test"
    return graph


def _py(nid: str, *needs: str) -> dict[str, Any]:
    return {"id": nid, "task": "noop", "plane": "python", "needs": list(needs)}


def _ctl(nid: str, *needs: str) -> dict[str, Any]:
    return {"id": nid, "task": "emit", "plane": "control", "needs": list(needs)}


def _events(change: Mutation) -> list[dict[str, Any]]:
    return [{"kind": kind, **orjson.loads(body)} for kind, body in change.events]


# -- the sets, spelled once ----------------------------------------------------------------


def test_status_sets_come_from_the_enums() -> None:
    assert {JobStatus.succeeded, JobStatus.failed, JobStatus.partial, JobStatus.cancelled} == FINISHED
    assert set(JobStatus) - FINISHED == {JobStatus.pending, JobStatus.queued, JobStatus.running}
    assert set(NodeStatus) - TERMINAL == {NodeStatus.pending, NodeStatus.queued, NodeStatus.running}
    assert {NodeStatus.succeeded} == SATISFIED


def test_the_lua_scripts_take_the_finished_statuses_from_python() -> None:
    from dualplane.common.bridge.batching import Scripts, finished_table

    assert set(re.findall(r'\["(\w+)"\] = true', finished_table())) == FINISHED
    for name, source in Scripts().sources.items():
        assert source.startswith(finished_table()), name
    for script in (PACKAGE / "common" / "lua").glob("*.lua"):
        # a comparison with a finished status written out is a copy of the set
        assert not re.search(r"status [~=]= '(succeeded|failed|partial|cancelled)'", script.read_text()), script.name


def test_the_web_ui_takes_the_status_sets_from_python() -> None:
    from dualplane.control_plane.ui import STATUSES_JS, UI_DIR

    served = dict(re.findall(r"export const (\w+) = new Set\((\[[^\]]*\])\);", STATUSES_JS))
    assert {name: set(json.loads(values)) for name, values in served.items()} == {"FINISHED": FINISHED,
                                                                                  "TERMINAL": TERMINAL}
    for script in UI_DIR.glob("*.js"):
        text = script.read_text()
        for status in ("succeeded", "partial", "cancelled"):
            # a list of finished statuses written out (e.g. ["succeeded", "failed", ...]) is a copy
            assert not re.search(rf'\[[^\]]*"{status}"[^\]]*"(failed|cancelled|skipped)"', text), script.name
    assert 'from "./statuses.js"' in (UI_DIR / "job.js").read_text()
    assert 'from "./statuses.js"' in (UI_DIR / "jobs.js").read_text()


# -- transitions ---------------------------------------------------------------------------


def test_submit_queues_the_first_lanes_ready_nodes() -> None:
    graph = _graph(_py("a"), _py("b", "a"), _ctl("c"))
    change = submit("j1", graph, "python:default", request_id="r1", user="alice", audit={"decision": "allow"},
                    unroutable=[("a", "no worker")])
    assert change.fields["status"] == "queued" and change.fields["owner"] == "python"
    assert change.fields["user"] == "alice" and change.fields["request_id"] == "r1"
    assert change.fields["tasks"] == "noop,emit" and change.fields["name"] == "test"
    assert list(change.nodes) == ["a"]  # b waits on a, c is on the other lane
    assert orjson.loads(change.nodes["a"])["status"] == "queued"
    events = _events(change)
    assert [e["kind"] for e in events] == ["audit", "status", "data", "status"]
    assert events[1].get("node_id") is None and events[1]["status"] == "queued"
    assert events[2]["data"] == {"unroutable": "no worker"}


def test_a_node_run_is_written_through_the_state() -> None:
    graph = _graph(_py("a"), _py("b"))
    state = JobState("j1", graph, status="queued", plane="python")
    node = state.by_id["a"]
    first = state.running(node, 1)
    assert first.fields["status"] == "running"
    assert [e.get("node_id") for e in _events(first)] == [None, "a"]  # the job starts with its first node
    second = state.running(state.by_id["b"], 1)
    assert "status" not in second.fields and len(second.events) == 1
    assert state.progress(node, 0.5).fields["progress"] == 0.25
    state.artifact(node, {"bucket": "b", "key": "jobs/j1/a/x.wav", "name": "x.wav", "size": 1, "sha256": "0" * 64,
                          "content_type": "audio/wav"})
    done = state.finished(node, "succeeded", output={"n": 1})
    event = _events(done)[0]
    assert event["status"] == "succeeded" and event["data"]["output"] == {"n": 1}
    assert event["data"]["artifacts"][0]["name"] == "x.wav"
    assert node.progress == 1.0 and done.fields["progress"] == 0.5


def test_merged_mutations_keep_the_later_values_and_every_event() -> None:
    graph = _graph(_py("a"))
    state = JobState("j1", graph, plane="python")
    node = state.by_id["a"]
    running = state.running(node, 1)
    finished = state.finished(node, "succeeded", output={})
    merged = running.then(finished)
    assert orjson.loads(merged.nodes["a"])["status"] == "succeeded"
    assert orjson.loads(running.nodes["a"])["status"] == "running"  # taken when the change was made
    assert merged.fields["status"] == "running" and merged.fields["progress"] == 1.0
    assert merged.events == running.events + finished.events


def test_hand_on_finishes_a_job_whose_nodes_all_ended() -> None:
    graph = _graph(_py("a"), _py("b", "a"))
    state = JobState("j1", graph, status="running", plane="python")
    state.finished(state.by_id["a"], "failed", error={"type": "X", "message": "x", "transient": False})
    decided = state.hand_on(cancel=False)
    assert decided.outcome == "failed" and decided.target is None
    assert orjson.loads(decided.mutation.nodes["b"])["status"] == "skipped"
    assert decided.mutation.fields["status"] == "failed" and decided.mutation.fields["owner"] == "none"
    assert _events(decided.mutation)[-1] == {**_events(decided.mutation)[-1], "status": "failed"}


def test_hand_on_queues_the_next_lanes_ready_nodes() -> None:
    graph = _graph(_ctl("pre"), _py("mid", "pre"), _ctl("post", "mid"))
    state = JobState("j1", graph, status="running", plane="control")
    state.finished(state.by_id["pre"], "succeeded", output={})
    decided = state.hand_on(cancel=False)
    assert decided.outcome is None and decided.target == "python:default"
    assert list(decided.mutation.nodes) == ["mid"] and graph.nodes[1].status == NodeStatus.queued
    assert decided.mutation.fields["owner"] == "python"


def test_hand_on_with_a_cancel_ends_every_unfinished_node() -> None:
    graph = _graph(_py("a"), _py("b", "a"))
    state = JobState("j1", graph, status="running", plane="python")
    decided = state.hand_on(cancel=True)
    assert decided.outcome == "cancelled"
    assert {n.id: (n.status, n.reason) for n in graph.nodes} == {
        "a": (NodeStatus.cancelled, JOB_CANCELLED), "b": (NodeStatus.cancelled, JOB_CANCELLED)}


def test_job_level_ends() -> None:
    assert request_cancel("j1", "succeeded") is None
    cancel = request_cancel("j1", "running")
    assert cancel is not None and cancel.fields == {"cancel": "1"}
    assert _events(cancel)[0]["status"] == "cancelling"
    failed = dead_lettered("j1", "poison")
    assert failed.fields["status"] == "failed" and failed.fields["error"] == "dead-lettered: poison"
    assert _events(failed)[0]["message"] == "dead-lettered: poison"
