"""A job's state machine: every transition of a job and its nodes, each returned as a :class:`Mutation`.

Pure — no Redis, no asyncio — like LangGraph's ``apply_writes`` / ``prepare_next_tasks``: the
planes run the loop, this module decides what changes. A transition updates the in-memory
graph (the nodes in place, as the runner holds them) and returns what must be written for it
in one atomic step: node states, job fields and events. Only the bridge turns a mutation into
script arguments (``Bridge.emit`` / ``handoff`` / ``create_job`` / ``external_write``).

The transitions:

* :func:`submit` — a new job: its job fields and first events, the first lane's ready nodes queued;
* :class:`JobState` — a node running (or claimed by an external worker), its progress, data,
  artifacts, a retry, its end (:meth:`JobState.running` … :meth:`JobState.finished`), and :meth:`JobState.hand_on`: a
  plane's plan is done (cancel the rest, propagate skips, the outcome, the next lane, queue its
  ready nodes, the owner fields);
* :func:`request_cancel` and :func:`dead_lettered`, the job-level ends that come from outside a plan,
  and the repairs that put a job back on a lane: :func:`requeued` (a lost stream entry) and
  :func:`replayed` (a dead letter replayed).

What stays in Lua is what must be atomic with the check that guards it (the fence, the
``handoff_seq``, "not finished yet") and the storage side of an end (indexes, retention).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dualplane.common.graph import (
    EXTERNAL_LANE,
    is_terminal,
    job_outcome,
    lane_of,
    next_lane,
    owner_of,
    progress_of,
    propagate_skips,
)
from dualplane.common.models import ArtifactRef, Graph, JobOwner, JobStatus, Node, NodeError, NodeStatus
from dualplane.common.statuses import FINISHED
from dualplane.common.wire import event_body

#: Node fields that make up a node's runtime state (stored under ``n:<id>``).
RUNTIME_FIELDS = frozenset(
    {"status", "attempts", "progress", "started_at", "finished_at", "output", "artifacts", "error", "reason"}
)
_RUNTIME_INCLUDE = set(RUNTIME_FIELDS)  # pydantic's include/exclude take a set
#: Why nodes end when their job is cancelled.
JOB_CANCELLED = "job cancelled"
#: Why a node ends when another consumer took its job over (this one was paused past its lease).
TAKEN_OVER = "the job was taken over elsewhere"

Event = tuple[str, bytes]
"""(channel kind, event body without ``seq``), as :func:`~dualplane.common.wire.event_body` makes it."""


def node_state(node: Node) -> bytes:
    """A node's runtime state as stored under ``n:<id>``."""
    return node.model_dump_json(include=_RUNTIME_INCLUDE).encode()


@dataclass(slots=True, eq=False)
class Mutation:
    """One atomic change of a job: what its hash gets and which events it appends, in order.

    :param nodes: node id → its runtime state as stored (:func:`node_state`), taken when the
        change was made, so a later change of the same node in the same tick cannot leak in.
    :param fields: job fields (``status``, ``owner``, ``progress``, …) → value.
    :param events: the events, in the order they get their seqs.
    """

    nodes: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def node(self, node: Node) -> None:
        self.nodes[node.id] = node_state(node)

    def then(self, later: Mutation) -> Mutation:
        """This change followed by ``later`` as one: ``later``'s values win, events keep their order."""
        return Mutation({**self.nodes, **later.nodes}, {**self.fields, **later.fields}, self.events + later.events)


@dataclass(slots=True, eq=False)
class HandOn:
    """What :meth:`JobState.hand_on` decided: the mutation, the job's ``outcome`` (its final status;
    None while it goes on) and the ``target`` lane that owns it next (None once finished)."""

    mutation: Mutation
    outcome: str | None
    target: str | None


# -- job level -------------------------------------------------------------------------------


def submit(job_id: str, graph: Graph, lane: str, *, request_id: str | None, user: str | None,
           audit: dict[str, Any] | None = None, unroutable: Sequence[tuple[str, str]] = ()) -> Mutation:
    """A new job queued on ``lane``: its job fields, the audit decision (first: it was made
    before the job was queued), the ``queued`` event, an ``unroutable`` data event per
    ``(node id, reason)``, and the lane's ready nodes queued. The graph's ``spec`` and the
    stream entry are the bridge's (``create_job``). Pending nodes need no state field:
    absent means the spec's state."""
    change = Mutation(fields={"id": job_id, "status": JobStatus.queued.value, "owner": owner_of(lane), "cancel": "",
                              "tasks": ",".join(dict.fromkeys(node.task for node in graph.nodes)),
                              "name": graph.metadata["name"]})
    if request_id:
        change.fields["request_id"] = request_id
    if user:
        change.fields["user"] = user
    if audit is not None:
        change.events.append(event_body("audit", job_id, message="allowed by the content policy", data=audit,
                                        plane="control"))
    change.events.append(event_body("status", job_id, status=JobStatus.queued.value, plane="control"))
    for node_id, reason in unroutable:
        change.events.append(event_body("data", job_id, node_id=node_id, message=reason, data={"unroutable": reason},
                                        plane="control"))
    _queue_ready(job_id, graph, lane, change, "control")
    return change


def request_cancel(job_id: str, status: str) -> Mutation | None:
    """Set the job's cancel flag (the truth the owner reads) with a ``cancelling`` event; None
    when the job has already finished."""
    if status in FINISHED:
        return None
    return Mutation(fields={"cancel": "1"},
                    events=[event_body("status", job_id, status="cancelling", message="cancel requested")])


def dead_lettered(job_id: str, reason: str) -> Mutation:
    """The job failed because its message was dead-lettered (``dead_letter.lua`` writes it only
    when the job has not finished)."""
    message = f"dead-lettered: {reason}"
    return Mutation(
        fields={"status": JobStatus.failed.value, "owner": JobOwner.none.value, "error": message,
                "finished_at": time.time()},
        events=[event_body("status", job_id, status=JobStatus.failed.value, message=message)])


def requeued(job_id: str, reason: str) -> Mutation:
    """The reconciler handed the job on again because its stream entry was lost
    (``requeue.lua`` writes it only when the entry is really gone and the job has not moved on)."""
    return Mutation(events=[event_body("data", job_id, message=reason, data={"requeued": reason}, plane="control")])


def replayed(job_id: str, entry_id: str, lane: str) -> Mutation:
    """A dead letter of the job was replayed onto ``lane``: it is queued there again
    (``replay.lua`` writes it only when that dead letter is what failed the job, and undoes the
    storage side of the dead-lettering: the error, the retention, the index)."""
    return Mutation(fields={"status": JobStatus.queued.value, "owner": owner_of(lane)},
                    events=[event_body("status", job_id, status=JobStatus.queued.value,
                                       message=f"replayed from dead letter {entry_id}", plane="control")])


# -- while a plane holds the job ----------------------------------------------------------------


class JobState:
    """A job as the plane holding it sees it, and every transition of its nodes.

    :param job_id: the job.
    :param graph: its graph, nodes in their current state (updated in place by the transitions).
    :param status: the job-level status as last written.
    :param plane: the plane writing (``control``, ``python``, ``external``): every event says so.
    """

    __slots__ = ("by_id", "graph", "job_id", "plane", "status")

    def __init__(self, job_id: str, graph: Graph, *, status: str = JobStatus.queued.value, plane: str) -> None:
        self.job_id = job_id
        self.graph = graph
        self.by_id: dict[str, Node] = {node.id: node for node in graph.nodes}
        self.status = status
        self.plane = plane

    def _node_changed(self, node: Node, events: list[Event]) -> Mutation:
        change = Mutation(events=events)
        change.node(node)
        change.fields["progress"] = progress_of(self.graph)
        return change

    def running(self, node: Node, attempt: int, message: str | None = None) -> Mutation:
        """An attempt starts (the job is running from its first one on)."""
        node.status = NodeStatus.running
        node.attempts = attempt
        node.started_at = node.started_at or time.time()
        events = []
        job_starts = self.status != JobStatus.running
        if job_starts:
            events.append(event_body("status", self.job_id, status=JobStatus.running.value, plane=self.plane))
        events.append(event_body("status", self.job_id, node_id=node.id, status=NodeStatus.running.value,
                                 attempt=node.attempts, message=message, plane=self.plane))
        change = self._node_changed(node, events)
        if job_starts:
            self.status = JobStatus.running.value
            change.fields["status"] = self.status
        return change

    def claimed(self, node: Node, claimant: str) -> Mutation:
        """An external worker claimed the node: a new attempt from zero. A running node is claimed
        again only when its previous claim's lease ran out (external.lua checks that)."""
        again = node.status == NodeStatus.running
        node.progress, node.error = 0.0, None
        message = (f"claimed again by {claimant}: the previous claim's lease ran out" if again
                   else f"claimed by {claimant}")
        return self.running(node, node.attempts + 1, message)

    def progress(self, node: Node, progress: float, message: str | None = None) -> Mutation:
        node.progress = progress
        return self._node_changed(node, [event_body("progress", self.job_id, node_id=node.id, progress=progress,
                                                    message=message, plane=self.plane)])

    def data(self, node: Node, data: dict[str, Any], message: str | None = None) -> Mutation:
        return self._node_changed(node, [event_body("data", self.job_id, node_id=node.id, data=data,
                                                    message=message, plane=self.plane)])

    def artifact(self, node: Node, ref: dict[str, Any]) -> Mutation:
        """Keys are deterministic, so a retried attempt replaces its earlier reference."""
        artifact = ArtifactRef.model_validate(ref)
        node.artifacts = [a for a in node.artifacts if a.key != artifact.key] + [artifact]
        return self._node_changed(node, [event_body("data", self.job_id, node_id=node.id, data={"artifact": ref},
                                                    message="artifact", plane=self.plane)])

    def retrying(self, node: Node, error: dict[str, Any], delay_s: float) -> Mutation:
        """An attempt failed and another follows after ``delay_s``."""
        node.error = NodeError.model_validate(error)
        return self._node_changed(node, [event_body(
            "status", self.job_id, node_id=node.id, status=NodeStatus.running.value, attempt=node.attempts,
            message=f"retrying in {delay_s:.2f}s", data={"error": error}, plane=self.plane)])

    def finished(self, node: Node, status: str, *, output: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None, reason: str | None = None,
                 message: str | None = None) -> Mutation:
        """The node ended ``succeeded`` (with ``output``), ``failed`` (with ``error``) or
        ``skipped`` / ``cancelled`` (with ``reason``, which is also the event's message unless
        ``message`` is given)."""
        node.status = NodeStatus(status)
        node.finished_at = time.time()
        data: dict[str, Any] | None = None
        if status == NodeStatus.succeeded:
            node.output = output or {}
            node.progress = 1.0
            node.error = None
            data = {"output": node.output}
            if node.artifacts:
                data["artifacts"] = [a.model_dump() for a in node.artifacts]
        elif status == NodeStatus.failed:
            node.error = NodeError.model_validate(error)
            data = {"error": error}
        else:
            node.reason = reason
        return self._node_changed(node, [event_body(
            "status", self.job_id, node_id=node.id, status=status, attempt=node.attempts or None,
            message=message or node.reason, data=data, plane=self.plane)])

    def hand_on(self, *, cancel: bool) -> HandOn:
        """This plane is done with the job for now: cancel what has not ended (``cancel``), skip
        what can never run, then either finish the job or name the lane that owns it next and
        queue that lane's ready nodes. A job whose external nodes are still claimed or waiting
        to be stays with the external workers."""
        change = Mutation()
        if cancel:
            for node in self.graph.nodes:
                if not is_terminal(node):
                    node.status, node.reason, node.finished_at = NodeStatus.cancelled, JOB_CANCELLED, time.time()
                    change.events.append(event_body("status", self.job_id, node_id=node.id,
                                                    status=NodeStatus.cancelled.value, message=node.reason,
                                                    plane=self.plane))
                    change.node(node)
        for node in propagate_skips(self.graph):
            change.events.append(event_body("status", self.job_id, node_id=node.id, status=NodeStatus.skipped.value,
                                            message=node.reason, plane=self.plane))
            change.node(node)
        outcome = job_outcome(self.graph)
        if outcome:
            change.fields.update(status=outcome, owner=JobOwner.none.value, finished_at=time.time(), progress=1.0)
            change.events.append(event_body("status", self.job_id, status=outcome, plane=self.plane))
            return HandOn(change, outcome, None)
        waiting = any(lane_of(n) == EXTERNAL_LANE and n.status in (NodeStatus.queued, NodeStatus.running)
                      for n in self.graph.nodes)
        target = EXTERNAL_LANE if waiting else next_lane(self.graph)
        _queue_ready(self.job_id, self.graph, target, change, self.plane)
        change.fields.update(owner=owner_of(target or EXTERNAL_LANE), progress=progress_of(self.graph))
        return HandOn(change, None, target)


def _queue_ready(job_id: str, graph: Graph, lane: str | None, change: Mutation, plane: str) -> None:
    """Queue the pending nodes of ``lane`` whose needs have all ended."""
    by_id = {n.id: n for n in graph.nodes}
    for node in graph.nodes:
        if node.status == NodeStatus.pending and lane_of(node) == lane and all(
            is_terminal(by_id[n]) for n in node.needs
        ):
            node.status = NodeStatus.queued
            change.events.append(event_body("status", job_id, node_id=node.id, status=NodeStatus.queued.value,
                                            plane=plane))
            change.node(node)
