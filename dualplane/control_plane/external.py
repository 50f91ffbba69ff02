"""External nodes: work done by a worker outside dualplane (a service in another language, an
HTTP-only GPU box) that claims a node and reports on it over HTTP.

When the plane that holds a job reaches ``plane: external`` nodes it marks them ``queued`` and
parks the job (``handoff.lua`` with the ``external`` target: no stream carries it, ``owner`` is
``external``). A worker then claims one node (:meth:`ExternalNodes.claim`): the claim moves the
job's fence on and keeps the new value as the node's *claim token*, with a lease; every report
(:meth:`ExternalNodes.report`: progress, data, completion, failure) carries that token and renews
the lease. Both go through ``external.lua``, the same atomic write-plus-events step as the planes'
mirroring, checked against the token and against the node state the change was computed from. A
claim whose lease ran out without a report can be taken by another claimant, which gets a new
token: the first claimant's late reports are then rejected, like a paused consumer's writes.

When a node ends, :meth:`ExternalNodes.advance` does what a plane's hand-on does (skips, the
job's outcome, queueing what is ready) and hands the job on with ``handoff.lua`` — to the lane of
its next nodes, or finished — once no external node is queued or running any more; the
``handoff_seq`` check makes a second, concurrent advance a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dualplane.common.artifacts import ArtifactStore
from dualplane.common.bridge import Bridge
from dualplane.common.errors import Conflict, NotFound, ObjectNotFound, UnknownJob, Unprocessable
from dualplane.common.graph import EXTERNAL_LANE, is_terminal, lane_of, resolve_refs
from dualplane.common.job_state import JobState, Mutation
from dualplane.common.models import ArtifactRef, Job, Node, NodeError, NodeStatus
from dualplane.common.telemetry import PlaneMetrics

log = logging.getLogger("dualplane.external")

PLANE = "external"
#: How long the presigned URLs of a claim (inputs to GET, outputs to PUT) are valid.
URL_EXPIRY_S = 3600
#: Reads and writes retried when another writer changed the node in between.
WRITE_TRIES = 8


class ExternalConflict(Conflict):
    """A claim or report that the node's state refuses: held by another claim, a stale token, a
    node that already ended (HTTP 409; nothing was changed)."""


class UnknownNode(NotFound):
    """The job has no external node of that id (HTTP 404)."""

    title = "Unknown node"


class InvalidReport(Unprocessable):
    """A report that cannot be applied as sent, e.g. an artifact that was not uploaded (HTTP 422)."""

    title = "Invalid report"


def _state(job: Job) -> JobState:
    return JobState(job.id, job.graph, status=job.status, plane=PLANE)


def upload_key(job_id: str, node_id: str, token: int, name: str) -> str:
    """Where a claim's output ``name`` is uploaded: per claim, so a late upload of an older claim
    never replaces what the current one wrote."""
    base = ArtifactStore.key_for(job_id, node_id, name)  # validates the segments
    return f"jobs/{job_id}/{node_id}/claim-{token}/{base.rsplit('/', 1)[1]}"


class ExternalNodes:
    """Claims, reports and hand-ons of external nodes.

    :param bridge: a connected bridge. :param artifacts: the store presigned URLs point into
        (None: claims get no URLs and completions may not name artifacts).
    :param metrics: where a job finished here is counted.
    """

    def __init__(self, bridge: Bridge, artifacts: ArtifactStore | None, *, metrics: PlaneMetrics | None = None,
                 ) -> None:
        self.bridge = bridge
        self.artifacts = artifacts
        self._metrics = metrics

    # -- claim -----------------------------------------------------------------------

    async def claim(self, job_id: str, node_id: str, *, lease_s: float, uploads: list[str],
                    claimant: str) -> dict[str, Any]:
        """Take a queued node (or a running one whose claim's lease ran out): its params with
        ``$ref`` values filled in, its inputs (upstream outputs and artifact GET URLs), PUT URLs
        for the outputs named in ``uploads``, and the token every report must carry."""
        if uploads and self.artifacts is None:
            raise InvalidReport("this control plane has no object store: a claim cannot get upload URLs")

        def take(job: Job, node: Node) -> tuple[Mutation, bool]:
            if job.cancel_requested:
                raise ExternalConflict(f"job {job_id!r} is being cancelled")
            if node.status not in (NodeStatus.queued, NodeStatus.running):
                raise ExternalConflict(f"node {node_id!r} is {node.status}: only a queued node, or a running one "
                                       "whose claim's lease ran out, can be claimed")
            return _state(job).claimed(node, claimant), False

        try:
            job, node, token, deadline = await self._write(job_id, node_id, take, token=None, lease_s=lease_s)
        except ExternalConflict:
            await self.advance(job_id)  # e.g. a cancel that came while the job was being parked
            raise
        by_id = {n.id: n for n in job.graph.nodes}
        try:
            params = resolve_refs(node.params, by_id)
        except KeyError as exc:  # an upstream output lacks what the graph points at: the node cannot run
            await self.report(job_id, node_id, token, kind="fail",
                              error={"type": "InvalidParams", "message": str(exc.args[0])})
            raise ExternalConflict(f"node {node_id!r} cannot be given its params ({exc.args[0]}); it failed") from None
        return {
            "token": token, "attempt": node.attempts, "lease_s": lease_s, "lease_expires_at": deadline,
            "task": node.task, "params": params,
            "inputs": {need: await self._input(by_id[need]) for need in node.needs},
            "uploads": {name: await self._upload(job_id, node_id, token, name) for name in uploads},
        }

    async def _input(self, upstream: Node) -> dict[str, Any]:
        artifacts = []
        for ref in upstream.artifacts:
            url = await self.artifacts.presigned_url(ref.key, URL_EXPIRY_S) if self.artifacts else None
            artifacts.append({**ref.model_dump(mode="json"), "url": url})
        return {"output": upstream.output, "artifacts": artifacts}

    async def _upload(self, job_id: str, node_id: str, token: int, name: str) -> dict[str, str]:
        assert self.artifacts is not None
        key = upload_key(job_id, node_id, token, name)
        return {"key": key, "url": await self.artifacts.presigned_put_url(key, URL_EXPIRY_S)}

    # -- reports ---------------------------------------------------------------------

    async def report(self, job_id: str, node_id: str, token: int, *, kind: str, attempt: int | None = None,
                     progress: float | None = None, message: str | None = None,
                     data: dict[str, Any] | None = None, output: dict[str, Any] | None = None,
                     artifacts: Sequence[str] = (), error: dict[str, Any] | None = None) -> dict[str, Any]:
        """Apply one report of the claim holding ``token``: ``progress`` (and ``message``),
        ``data``, ``complete`` (``output``, the names of the ``artifacts`` it uploaded) or
        ``fail`` (``error``). Each renews the claim's lease (by the length the claim asked for);
        the last two end it."""
        refs = [await self._artifact(job_id, node_id, token, name) for name in artifacts]

        def apply(job: Job, node: Node) -> tuple[Mutation, bool]:
            if node.status != NodeStatus.running:
                raise ExternalConflict(f"node {node_id!r} is {node.status}: a late or duplicate report changes "
                                       "nothing")
            if attempt is not None and attempt != node.attempts:
                raise ExternalConflict(f"attempt {attempt} is not the node's current attempt ({node.attempts})")
            state = _state(job)
            if kind == "progress":
                change = state.progress(node, progress if progress is not None else node.progress, message)
            elif kind == "data":
                change = state.data(node, data or {}, message)
            elif kind == "complete":
                node.artifacts = [ArtifactRef.model_validate(ref) for ref in refs]
                change = state.finished(node, NodeStatus.succeeded.value, output=output, message=message)
            else:
                failure = NodeError.model_validate({"type": "ExternalError", **(error or {})})
                change = state.finished(node, NodeStatus.failed.value, error=failure.model_dump(mode="json"),
                                        message=message)
            return change, is_terminal(node)

        try:
            job, node, _, deadline = await self._write(job_id, node_id, apply, token=token, lease_s=None)
        except ExternalConflict:
            await self.advance(job_id)  # a hand-on that failed after the node's end is made up for here
            raise
        if is_terminal(node) or job.cancel_requested:
            await self.advance(job_id)
        return {"status": str(node.status), "attempt": node.attempts, "cancel_requested": job.cancel_requested,
                "lease_expires_at": deadline}

    async def _artifact(self, job_id: str, node_id: str, token: int, name: str) -> dict[str, Any]:
        if self.artifacts is None:
            raise InvalidReport("this control plane has no object store: a completion cannot name artifacts")
        try:
            return await self.artifacts.describe(upload_key(job_id, node_id, token, name), name)
        except ObjectNotFound:
            raise InvalidReport(f"artifact {name!r} was not uploaded (PUT it to the URL the claim returned)") from None
        except ValueError as exc:
            raise InvalidReport(f"artifact {name!r}: {exc}") from None

    # -- the write --------------------------------------------------------------------

    async def _write(self, job_id: str, node_id: str,
                     change: Callable[[Job, Node], tuple[Mutation, bool]],
                     *, token: int | None, lease_s: float | None) -> tuple[Job, Node, int, float | None]:
        """Read the job, let ``change`` update the node (and return its events and extra job fields,
        and whether the claim ends), write it with external.lua; read again when someone else changed
        the node meanwhile. A claim of ``lease_s`` when ``token`` is None. Returns the job and
        node as written, the token and the lease's deadline (None once the claim ended)."""
        for _ in range(WRITE_TRIES):
            job, raw = await self.bridge.job_and_raw_state(job_id, node_id)
            node = next((n for n in job.graph.nodes if n.id == node_id), None)
            if node is None or lane_of(node) != EXTERNAL_LANE:
                raise UnknownNode(f"job {job_id!r} has no external node {node_id!r}")
            if job.owner != "external" and not is_terminal(node):
                raise ExternalConflict(f"node {node_id!r} is not claimable yet: the job is not waiting on external "
                                       "workers (its nodes upstream have not finished)")
            written, ends = change(job, node)
            lease = lease_s if token is None else (None if ends else 1.0)
            code, deadline = await self.bridge.external_write(job_id, node_id, token=token, lease_s=lease,
                                                              expected_state=raw or b"", change=written)
            if code == -4:
                continue
            if code == -2:
                raise UnknownJob(job_id)
            if code == -3:
                raise ExternalConflict(f"job {job_id!r} is not waiting on external workers any more")
            if code == -1:
                raise ExternalConflict(
                    f"node {node_id!r} is held by another claim until its lease runs out" if token is None else
                    f"token {token} is not node {node_id!r}'s current claim (its lease ran out and the node was "
                    "claimed again, or the claim ended): nothing was changed")
            return job, node, code, deadline
        raise ExternalConflict(f"node {node_id!r} kept changing while this was applied; send it again")

    # -- hand-on ----------------------------------------------------------------------

    async def advance(self, job_id: str) -> None:
        """Hand a job that waits on external workers on, once it need not wait any more: a node
        ended (skip what cannot run, queue what is ready, hand it to the next lane or finish it)
        or a cancel was requested (every unfinished node is cancelled)."""
        for _ in range(WRITE_TRIES):
            try:
                job = await self.bridge.get_job(job_id)
            except UnknownJob:
                return
            if job.owner != "external":
                return
            graph = job.graph
            decided = _state(job).hand_on(cancel=job.cancel_requested)
            outcome, target = decided.outcome, decided.target
            if target == EXTERNAL_LANE and not decided.mutation.events:
                return  # still waiting on its claims, and nothing new to claim
            seq = await self.bridge.handoff(job_id, expected_seq=job.handoff_seq, fence=None, source=None,
                                            target_lane=target, graph=graph, request_id=job.request_id,
                                            sent_by=PLANE, change=decided.mutation)
            if seq == -1:
                continue  # another advance went first: look again
            if outcome and self._metrics is not None:
                self._metrics.job_finished(graph, outcome, job.created_at)
            log.info("job %s %s", job_id, f"finished {outcome}" if outcome else f"handed to {target}")
            return
