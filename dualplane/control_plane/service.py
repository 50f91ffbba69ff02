"""The control plane as an object: submission, the control runner, job reads, cancel.

The FastAPI app (:mod:`dualplane.control_plane.app`) is a thin HTTP shell over this;
benchmarks and tests can drive it in-process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from dualplane.common import job_state, logs, statuses
from dualplane.common.access import literal_keys, may_read
from dualplane.common.artifacts import ArtifactStore, store_from_settings
from dualplane.common.bridge import Bridge, job_from_hash
from dualplane.common.consumer import Consumer
from dualplane.common.errors import BridgeError, Conflict, GraphValidationError, Unavailable
from dualplane.common.executor import Executor
from dualplane.common.graph import EXTERNAL_LANE, GRAPH_FIELD, next_lane, validate_graph
from dualplane.common.job_state import RUNTIME_FIELDS
from dualplane.common.models import CapabilityManifest, Event, Graph, Job, Node
from dualplane.common.registry import TaskRegistry
from dualplane.common.routing import Router
from dualplane.common.settings import Settings
from dualplane.common.telemetry import PlaneMetrics
from dualplane.control_plane.composer import Capabilities
from dualplane.control_plane.external import ExternalNodes
from dualplane.control_plane.gallery import OutputKind, OutputPage, list_outputs
from dualplane.control_plane.job_names import InvalidName, name_graph, rename
from dualplane.control_plane.limits import Limits
from dualplane.control_plane.listing import JobFilter, Page, list_jobs
from dualplane.control_plane.metrics import HubCollector, QueueCollector
from dualplane.control_plane.planner import Planner, chat_model_from_settings
from dualplane.control_plane.policy import (
    Decision,
    Policy,
    PolicyContext,
    PolicyRefusal,
    PolicyText,
    graph_texts,
    planned_goal,
    uploaded_texts,
    voice_clips,
)
from dualplane.control_plane.reconciler import Reconciler
from dualplane.control_plane.uploads import UploadIndex
from dualplane.tasks import default_registry

log = logging.getLogger("dualplane.control")

_RUNTIME_DEFAULTS = {f: Node.model_fields[f].default for f in (
    "status", "attempts", "progress", "started_at", "finished_at", "output", "error", "reason")}


@dataclass(frozen=True)
class Submitted:
    """Result of a submission: ``created`` is False when the id already existed."""

    job_id: str
    created: bool
    status: str
    #: The new job's hash as stored (None when the id existed).
    stored: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @functools.cached_property
    def job(self) -> Job | None:
        """The new job as stored, made when asked (what a submission answers with); None when
        the id existed."""
        return job_from_hash(self.stored) if self.stored is not None else None


class ControlPlane:
    """Submission API plus the control runner (consumer of ``stream:control``).

    :param settings: process settings (Redis, S3, concurrency).
    :param registry: task catalog; the default one when None.
    :param metrics_registry: Prometheus registry for this process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: TaskRegistry | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or default_registry()
        self.bridge = Bridge(settings.bridge_config())
        self.artifacts: ArtifactStore | None = store_from_settings(settings.store)
        #: What each user uploaded (POST /uploads), with its kind and consent.
        self.uploads = UploadIndex(self.bridge)
        #: The content policy (DUALPLANE_POLICY_FILE, else the packaged one): a bad file fails the start here.
        self.policy = Policy.load(settings.policy_file, registry=self.registry)
        self.metrics = PlaneMetrics(metrics_registry, "control")
        #: Streams and worker pools read from Redis at scrape time (``await queues.refresh()``).
        self.queue_metrics = QueueCollector(self.bridge)
        #: WebSocket counters; the app points ``hub_metrics.hub`` at its hub.
        self.hub_metrics = HubCollector()
        self.metrics.registry.register(self.queue_metrics)
        self.metrics.registry.register(self.hub_metrics)
        self.executor = Executor(
            self.registry, "control", bridge=self.bridge, concurrency=max(64, settings.concurrency),
            artifacts=self.artifacts, hooks=[self.metrics],
        )
        self.runner = Consumer(
            self.bridge, self.executor, lane="control", name=f"control-{settings.worker_id}",
            concurrency=max(256, settings.concurrency), hooks=[self.metrics],
            cancel_poll_s=settings.cancel_poll_s,
        )
        self.metrics.concurrency.set(self.runner._concurrency)
        self._runner_task: asyncio.Task[None] | None = None
        #: Set when the control runner's loop died: /health turns red and the process exits 1.
        self.failed = asyncio.Event()
        self._bucket_task: asyncio.Task[None] | None = None
        self.router = Router(self.bridge, gpu_pool=settings.gpu_pool)
        #: Claims and reports of ``plane: external`` nodes (workers outside dualplane, over HTTP).
        self.external = ExternalNodes(self.bridge, self.artifacts, metrics=self.metrics)
        self.reconciler = Reconciler(self.bridge, interval_s=settings.reconcile_interval_s, metrics=self.metrics)
        self._reconciler_task: asyncio.Task[None] | None = None
        #: Pools a graph may name without a live worker serving them.
        self.known_pools = frozenset({"default", settings.pool, settings.gpu_pool, *settings.pools})
        self._noted_pools: set[str] = set()
        self.planner = Planner(self.registry,
                               chat_model=chat_model_from_settings(settings.planner),
                               capabilities=self.capabilities)
        self._model_limits = _model_limits(settings.models_config)

    async def capabilities(self) -> Capabilities:
        """What the live data plane offers (the planner composes against it); nothing is known
        while Redis is unreachable, and the plan says so instead of failing."""
        try:
            manifests = await self.router.workers()
        except (BridgeError, Unavailable, OSError):
            manifests = []
        return Capabilities.from_manifests(manifests, limits=self._model_limits)

    async def start(self) -> None:
        gc.freeze()  # long-lived start-up objects: keep the cyclic GC off them (see Worker.run)
        await self.bridge.connect()
        if self.artifacts is not None:
            # without the store the plane still takes jobs and runs control nodes; what needs
            # it answers 503 meanwhile, and /health says the plane is degraded
            self._bucket_task = await self.artifacts.ensure_bucket_soon()
        self._runner_task = asyncio.create_task(self.runner.run(), name="control-runner")
        self._runner_task.add_done_callback(self._runner_ended)
        if self.settings.reconcile_interval_s > 0:
            self._reconciler_task = asyncio.create_task(self.reconciler.run(), name="reconciler")
        await self.runner.started.wait()

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failed.set()  # the consumer logged why; the process now exits (cli)

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._bucket_task is not None:
            self._bucket_task.cancel()
        if self._reconciler_task is not None:
            self.reconciler.stop()
            await asyncio.gather(self._reconciler_task, return_exceptions=True)
        if self._runner_task is not None:
            await self.runner.stop(grace_s)
            self._runner_task.cancel()
            await asyncio.gather(self._runner_task, return_exceptions=True)
        await self.bridge.close()

    # -- API -------------------------------------------------------------------------

    async def submit(
        self,
        document: dict[str, Any] | Graph,
        *,
        request_id: str | None = None,
        user: str | None = None,
        idempotency_key: str | None = None,
        audit: Decision | None = None,
    ) -> Submitted:
        """Validate a graph and queue it on the lane of its first ready node.

        The job id is the graph's ``id``, else one derived from ``(user, idempotency_key)``,
        else a fresh one; an id that exists returns that job (``created`` False) when it
        belongs to the same user with the same graph, and raises :class:`JobConflict` otherwise.
        Raises :class:`~dualplane.common.errors.GraphValidationError` with node-scoped errors.
        ``audit``: the content policy's decision (:meth:`screen`), the new job's first event.
        """
        graph = self.validate(document)
        for node in graph.nodes:  # runtime state is ours to write, whatever the client sent
            for name, default in _RUNTIME_DEFAULTS.items():
                if getattr(node, name) != default:  # a pydantic setattr costs 2 µs: most graphs send none
                    setattr(node, name, default)
            if node.artifacts:
                node.artifacts = []
        job_id = _job_id(graph.id, user) or _idempotent_id(user, idempotency_key) or uuid.uuid4().hex
        await self._check_pools(graph)
        if user is not None:
            await self._check_keys(graph, user)
        unroutable = await self.router.route(graph)
        await self._note_pools(graph)
        lane = next_lane(graph) or "control"
        if lane == EXTERNAL_LANE:  # the control runner parks it for external workers (no stream carries that)
            lane = "control"
        change = job_state.submit(job_id, graph, lane, request_id=request_id, user=user,
                                  audit=audit.audit_data() if audit is not None else None,
                                  unroutable=[(problem.node_id, problem.reason) for problem in unroutable])
        created = await self.bridge.create_job(job_id, graph, change, lane=lane, request_id=request_id, user=user)
        if not created.created:
            await self._check_replay(job_id, graph, user)
            return Submitted(job_id=job_id, created=False, status=created.status)
        self.metrics.job_submitted(graph)
        if log.isEnabledFor(logging.INFO):
            with logs.bound(job_id=job_id, request_id=request_id, plane="control"):
                log.info("job %s submitted by %s: %d nodes, first lane %s", job_id, user, len(graph.nodes), lane)
        return Submitted(job_id=job_id, created=True, status=created.status, stored=created.stored)

    async def screen(self, graph: Graph, *, user: str, stage: Literal["submit", "compose"], goal: str | None = None,
                     texts: Sequence[PolicyText] = (), request_id: str | None = None) -> Decision:
        """Judge a validated graph, and the words of the /compose request it was planned from, by
        the content policy: the decision to pass to :meth:`submit`, or :class:`PolicyRefusal`
        (recorded in the audit stream first). Only the user's own uploads are read."""
        goal = goal or planned_goal(graph)
        context = PolicyContext(user=user, stage=stage, goal=goal, tasks=frozenset(n.task for n in graph.nodes))
        try:
            found = [*texts, *graph_texts(graph)]
            if self.artifacts is not None:
                found += await uploaded_texts(graph, self.registry, user, uploads=self.uploads.get,
                                              read=self.artifacts.get)
            return await self.policy.evaluate(found, voice_clips(graph), context, uploads=self.uploads.get)
        except PolicyRefusal as refusal:
            await self.bridge.record_refusal({
                "ts": time.time(), "user": user, "stage": stage, "rule": refusal.rule, "node": refusal.node,
                "detail": refusal.detail, "goal": goal, "tasks": ",".join(sorted(context.tasks)),
                "graph_id": graph.id, "request_id": request_id, "policy": self.policy.name,
                "digest": self.policy.digest})
            log.info("content policy refused a %s of %s: rule %s: %s", stage, user, refusal.rule, refusal.detail)
            raise

    async def _note_pools(self, graph: Graph) -> None:
        """Name the pools this job may queue on in the bridge's pools set, once per pool per
        process: the queue metrics list the streams from it."""
        pools = {node.pool for node in graph.nodes if node.plane == "python"}
        if not pools <= self._noted_pools:
            await self.bridge.note_pools(pools - self._noted_pools)
            self._noted_pools |= pools

    async def _check_pools(self, graph: Graph) -> None:
        """A pool is a stream and a metric series: a graph may name only pools that exist
        (configured, or served by a live worker), not create them at will."""
        named = {node.pool for node in graph.nodes if node.plane == "python"} - self.known_pools
        if not named:
            return
        live = {w.pool for w in await self.router.workers()}
        if named - live:  # a worker that just started may not be in the cached read yet
            live = {w.pool for w in await self.router.workers(fresh=True)}
        errors: dict[str, list[dict[str, Any]]] = {}
        for node in graph.nodes:
            if node.plane == "python" and node.pool in named - live:
                errors.setdefault(node.id, []).append({"field": "pool", "message": (
                    f"unknown pool {node.pool!r}: no live worker serves it and it is not configured "
                    f"(DUALPLANE_POOLS); known: {', '.join(sorted(self.known_pools | live))}")})
        if errors:
            raise GraphValidationError(errors)

    async def _check_keys(self, graph: Graph, user: str) -> None:
        """Object keys written in params must be the user's (their uploads, their jobs'
        artifacts) or public. Whether an object exists is not looked at here, so the error
        tells nothing about other users' objects (a missing key of one's own fails when read,
        with the error a key of someone else's gets there)."""
        errors: dict[str, list[dict[str, Any]]] = {}
        for node in graph.nodes:
            spec = self.registry.get(node.task)
            if spec is None:
                continue
            for field, key in literal_keys(spec.params, node.params):
                if not await may_read(key, user=user, job_id=None, job_owner=self.bridge.job_owner):
                    errors.setdefault(node.id, []).append({"field": f"params.{field}", "message": (
                        f"no object {key!r} (keys name your own uploads and job artifacts, or models/)")})
        if errors:
            raise GraphValidationError(errors)

    async def _check_replay(self, job_id: str, graph: Graph, user: str | None) -> None:
        """A resubmission must be the same user's same graph, or it is a conflict."""
        owner, spec = await self.bridge.job_fields(job_id, "user", "spec")
        if (owner or None) != user:  # reached only by in-process callers: users' ids are scoped
            raise JobConflict(f"job id {job_id!r} is already used by another job")
        if spec is not None and _same_spec(spec, graph):
            return
        raise JobConflict(f"job id {job_id!r} already exists with a different graph")

    def validate(self, document: dict[str, Any] | Graph) -> Graph:
        """Validate without submitting (raises GraphValidationError); the graph comes back named
        (``metadata.name``: the one given, checked, or one derived from its tasks)."""
        graph = validate_graph(document, self.registry)
        try:
            name_graph(graph, self.registry)
        except InvalidName as exc:
            raise GraphValidationError({GRAPH_FIELD: [{"field": "metadata.name", "message": str(exc)}]}) from None
        return graph

    async def get_job(self, job_id: str) -> Job:
        return await self.bridge.get_job(job_id)

    async def artifact_links(self, job: Job, expires_s: int = 3600) -> list[dict[str, Any]]:
        """Every artifact of a job, with its node and a presigned GET URL."""
        links = []
        for node in job.graph.nodes:
            for ref in node.artifacts:
                url = await self.artifacts.presigned_url(ref.key, expires_s) if self.artifacts else None
                links.append({"node_id": node.id, **ref.model_dump(mode="json"), "url": url})
        return links

    async def cancel(self, job_id: str) -> str:
        """Set the job's cancel flag and tell the planes; returns the job's status before.

        The flag is the truth (an owner reads it when it claims the job and on a slow poll);
        the published id is the fast path that stops a running node within a step."""
        status = await self.bridge.job_status(job_id)
        change = job_state.request_cancel(job_id, status)
        if change is not None:
            await self.bridge.emit(job_id, change)
            await self.bridge.publish_cancel(job_id)
        await self.external.advance(job_id)  # a job waiting on external workers has no plane to stop it
        return status

    async def wait_finished(self, job_id: str, timeout_s: float) -> Job:
        """The job once it is finished, or as it is after ``timeout_s``."""
        return await self.bridge.wait_finished(job_id, timeout_s)

    async def purge(self, job_id: str) -> None:
        """Delete a finished job, its events and its artifacts."""
        job = await self.bridge.get_job(job_id)
        if job.status not in FINISHED:
            raise JobConflict(f"job {job_id!r} is {job.status}; cancel it and wait until it has finished")
        if self.artifacts is not None:
            await self.artifacts.delete_prefix(f"jobs/{job_id}/")
        await self.bridge.delete_job(job_id, job.user)

    def task_catalog(self) -> list[dict[str, Any]]:
        """Every task with its plane, kind (``internal``: tests and plumbing, not a generator), human
        title, GPU need and params JSON Schema (a UI builds forms from it)."""
        return [
            {"name": spec.name, "plane": spec.plane, "description": spec.description, "gpu": spec.gpu,
             "kind": spec.kind, "title": spec.title, "internal": spec.kind == "internal",
             "params_schema": spec.params.model_json_schema()}
            for spec in sorted(self.registry.for_plane("control") + self.registry.for_plane("python"),
                               key=lambda spec: spec.name)
        ]

    # -- what the API reads: the routes go through the plane, not around it to the bridge --

    async def events(self, job_id: str, since: int = 0, count: int | None = None) -> list[Event]:
        """The job's events with seq > ``since``, in order (at most ``count``)."""
        return await self.bridge.events(job_id, since, count=count)

    async def list_jobs(self, flt: JobFilter, *, limit: int, cursor: str | None) -> Page:
        """A page of the jobs ``flt`` selects, newest first (see :mod:`.listing`)."""
        return await list_jobs(self.bridge, flt, limit=limit, cursor=cursor)

    async def workers(self) -> list[CapabilityManifest]:
        """The live workers' manifests (capability key not expired), by worker id."""
        manifests = [CapabilityManifest.model_validate_json(raw) for raw in await self.bridge.live_workers()]
        return sorted(manifests, key=lambda m: m.worker_id)

    async def admit(self, limits: Limits, user: str, amount: int = 1) -> None:
        """Count ``amount`` submissions of ``user`` against the rate ``limits`` allow
        (:class:`~.limits.RateLimited` past it)."""
        await limits.admit(self.bridge, user, amount)

    async def rename(self, job_id: str, name: str) -> bool:
        """Rename a job (see :func:`.job_names.rename`); False when it is gone."""
        return await rename(self.bridge, job_id, name)

    async def outputs(self, user: str, *, kind: OutputKind | None, limit: int, cursor: str | None) -> OutputPage:
        """A page of ``user``'s outputs, newest first (see :mod:`.gallery`)."""
        if self.artifacts is None:
            raise Unavailable("this control plane has no S3 endpoint configured")
        return await list_outputs(self.bridge, self.artifacts, user, kind=kind, limit=limit, cursor=cursor)

    # -- dead letters and the audit stream (routes_admin) -------------------------------------

    async def dead_letter_page(self, *, count: int, before: str | None) -> list[dict[str, str]]:
        return await self.bridge.dead_letter_page(count=count, before=before)

    async def dead_letter(self, entry_id: str) -> dict[str, str] | None:
        return await self.bridge.dead_letter_entry(entry_id)

    async def replay_dead_letter(self, entry_id: str) -> tuple[str, str | None]:
        """Put a dead letter back on its stream and its job back in the queue (one atomic step)."""
        return await self.bridge.replay_dead_letter(entry_id)

    async def discard_dead_letter(self, entry_id: str) -> bool:
        return await self.bridge.discard_dead_letter(entry_id)

    async def audit_page(self, *, count: int, before: str | None) -> list[dict[str, str]]:
        return await self.bridge.audit_page(count=count, before=before)

    async def preferences(self, user: str) -> dict[str, Any]:
        return await self.bridge.get_preferences(user)

    async def put_preferences(self, user: str, document: dict[str, Any]) -> None:
        await self.bridge.put_preferences(user, document)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the plane can take and run jobs, and the report: Redis, the control runner's
        consume loop, and the object store, whose outage alone is "degraded" (still ok)."""
        ok = await self.bridge.ping()
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "redis": ok}
        runner = self.runner.health()
        if not runner["ok"]:  # connected, yet control nodes are not being run
            ok = False
            body.update(status="unavailable", consumer=runner["error"])
        if self.artifacts is not None:
            body["object_store"] = await self.artifacts.available()
            if ok and not body["object_store"]:
                body["status"] = "degraded"
        return ok, body

    async def scrape(self) -> bytes:
        """The plane's metrics in the Prometheus text format."""
        await self.queue_metrics.refresh()  # Redis reads are async; collect() only reads the snapshot
        self.metrics.busy.set(self.runner.busy)
        self.metrics.running_nodes.set(self.executor.running_nodes)
        return generate_latest(self.metrics.registry)


#: Job statuses after which nothing changes any more (routes import it from here).
FINISHED = statuses.FINISHED


class JobConflict(Conflict):
    """An id is taken by another job, or the job is in a state that forbids the request (HTTP 409)."""


def _job_id(client_id: str | None, user: str | None) -> str | None:
    """A client-chosen id is the user's own name for the job: scoped to the user (like an
    idempotency key), so one user's ids neither collide with nor reveal another's. In-process
    callers without a user get the id as given."""
    if client_id is None or user is None:
        return client_id
    return "job-" + hashlib.sha256(f"{user}\0{client_id}".encode()).hexdigest()[:40]


def _idempotent_id(user: str | None, key: str | None) -> str | None:
    """Idempotency keys are per user: the same key from two users is two jobs."""
    if not key:
        return None
    return "idem-" + hashlib.sha256(f"{user or ''}\0{key}".encode()).hexdigest()[:40]


def _same_spec(stored: bytes | str, graph: Graph) -> bool:
    """Same graph, runtime state and name aside (a job renamed since is still the same job)."""

    def spec_only(document: dict[str, Any]) -> dict[str, Any]:
        nodes = [{k: v for k, v in node.items() if k not in RUNTIME_FIELDS} for node in document["nodes"]]
        metadata = {k: v for k, v in document.get("metadata", {}).items() if k != "name"}
        return {**document, "nodes": nodes, "metadata": metadata}

    return spec_only(orjson.loads(stored)) == spec_only(orjson.loads(graph.model_dump_json(exclude_defaults=True)))


def _model_limits(models_config: str | None) -> dict[str, dict[str, float]]:
    """Per-model bounds of the registry (max frames, sizes, windows) the composer keeps inside."""
    from dualplane.ml.model_store import ModelRegistry

    registry = ModelRegistry.load(models_config)
    return {name: dict(registry.get(name).limits) for name in registry.names()}
