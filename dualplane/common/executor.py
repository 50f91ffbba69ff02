"""Runs the nodes of one plane with LangGraph, many jobs per invocation, without lockstep.

The executor compiles **one** ``StateGraph`` per plane at start-up: one LangGraph node
per registered task of the plane, each with that task's retry policy. A batch of jobs
becomes one invocation in which every node of every job's plan is a ``Send`` to its
task's node. All of them start in the first superstep and each awaits its *own* needs
(asyncio futures), so a node starts the moment its needs are done: LangGraph's lockstep
supersteps never hold a fast branch behind a slow one, a skipped parent never stalls a
join, and there is no per-job compile (0.2–0.5 ms) or per-job invocation (0.4 ms) cost.

Everything a node reports (running, progress, data, artifacts, its end) travels through
LangGraph's stream writer; :meth:`Executor.run` consumes the ``custom`` stream and
mirrors each chunk into Redis through the bridge, in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import pydantic
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy, Send

from dualplane.common import logs
from dualplane.common.access import check_read
from dualplane.common.bridge import Bridge, Message
from dualplane.common.context import TaskContext
from dualplane.common.errors import NodeTimeout, ObjectNotFound, TaskCancelled, Unavailable
from dualplane.common.graph import blocked_reason, resolve_refs
from dualplane.common.job_state import JOB_CANCELLED, TAKEN_OVER, JobState, Mutation
from dualplane.common.models import Graph, Node, NodeStatus
from dualplane.common.retry import is_out_of_memory

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore
    from dualplane.common.registry import TaskRegistry, TaskSpec
    from dualplane.common.url_policy import UrlPolicy

log = logging.getLogger("dualplane.executor")

NodeFinished = Callable[[str, str, float, "dict[str, Any] | None"], None]
"""Hook called with (task, final status, seconds, output of a succeeded node) when a node ends."""


#: Attempts a node gets when a service it needs is down (the object store), whatever its own
#: retry policy: with the default backoff that rides out about a minute of outage.
OUTAGE_ATTEMPTS = 8
#: The graph node that fails a node whose task this process lacks (no task can have this name).
MISSING_TASK_NODE = "dualplane.missing-task"


def _outlasts(exc: BaseException, attempt: int) -> bool:
    """An outage is not the task's fault: it earns retries beyond the task's own policy."""
    return isinstance(exc, Unavailable) and attempt < OUTAGE_ATTEMPTS


class _RetryAttempt(Exception):
    """Raised out of a LangGraph node to have LangGraph back off and call it again."""


class _BatchState(TypedDict, total=False):
    batch: int  # key of the batch's sends, kept by the executor (LangGraph copies state)


@dataclass(eq=False)
class JobRun:
    """One job being run on this plane: its graph, the plan and the ownership fence.

    ``handoff_seq`` says which handoff brought the job here; ``fence`` is the token this
    plane's claim took (0 until the claim returns): every write of the run is checked
    against it, so a plane that lost the job to a reclaim cannot write any more."""

    job_id: str
    graph: Graph
    plan: list[str]
    handoff_seq: int
    #: The plane running it (every event it writes says so).
    plane: str = "control"
    fence: int = 0
    #: The job's owner: every object key a task reads for the job must be theirs.
    user: str | None = None
    message: Message | None = None
    request_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    stale: bool = False
    #: A write of this run did not reach Redis (an outage): the job hash may lack what the
    #: run did, so it must not hand on from here; its message is reclaimed and re-run instead.
    unmirrored: bool = False
    #: Asked (with the run) before each node starts: is the job still this plane's? (False:
    #: another consumer reclaimed it while this one was paused, and the node may have
    #: succeeded there.) A bound method of the consumer, not a partial of the run: a run that
    #: refers to itself lives until a full collection, and the dispatch loop makes thousands.
    owned: Callable[[JobRun], Awaitable[bool]] | None = None
    #: Called synchronously when the plan is done, so the handoff joins the same pipeline
    #: as the last node's events.
    on_done: Callable[[JobRun], None] | None = None
    #: When the job was submitted (unix s, from the job hash), for the job duration metric.
    created_at: float | None = None
    #: Set for a run started before its claim returned: nodes wait for True; False drops the run.
    admitted: asyncio.Future[bool] | None = None

    def __post_init__(self) -> None:
        #: The job's state machine: every change of the run goes through it.
        self.state = JobState(self.job_id, self.graph, plane=self.plane)
        self.by_id: dict[str, Node] = self.state.by_id
        # futures only where another planned node waits on them (most plans have one node)
        awaited = {need for nid in self.plan for need in self.by_id[nid].needs}.intersection(self.plan)
        loop = asyncio.get_running_loop()
        self.finished: dict[str, asyncio.Future[None]] = {nid: loop.create_future() for nid in awaited}
        self.remaining = len(self.plan)
        if not self.plan and not self.done.done():
            self.done.set_result(None)


class Executor:
    """Runs plans of one plane.

    :param registry: the task catalog; only tasks of ``plane`` are compiled in.
    :param plane: ``control`` or ``python``.
    :param bridge: where state changes are mirrored.
    :param concurrency: nodes running at once (waiting for needs does not count).
    :param artifacts: artifact store offered to tasks.
    :param on_node_finished: metrics hook ``(task, outcome, seconds, output or None)``.
    :param models: model manager offered to tasks as ``ctx.models`` (data plane).
    :param describe_worker: the worker's capability manifest, as ``ctx.describe_worker``.
    :param unmet_requirements: why this worker cannot meet a node's ``requires`` (None: it can).
    :param thread_initializer: run once in each thread that runs sync tasks.
    :param url_policy: where tasks may fetch URL inputs from (None: public addresses only).
    """

    def __init__(
        self,
        registry: TaskRegistry,
        plane: str,
        *,
        bridge: Bridge,
        concurrency: int = 4,
        artifacts: ArtifactStore | None = None,
        on_node_finished: NodeFinished | None = None,
        worker_id: str | None = None,
        models: Any = None,
        describe_worker: Callable[[], dict[str, Any]] | None = None,
        unmet_requirements: Callable[[Node], str | None] | None = None,
        thread_initializer: Callable[[], None] | None = None,
        url_policy: UrlPolicy | None = None,
    ) -> None:
        self.plane = plane
        self._url_policy = url_policy
        self._unmet_requirements = unmet_requirements
        self.worker_id = worker_id or plane
        self._registry = registry
        self._bridge = bridge
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"{plane}-task",
                                           initializer=thread_initializer)
        self._artifacts = artifacts
        self._models = models
        self._describe_worker = describe_worker
        self._on_node_finished = on_node_finished
        self._runs: dict[int, JobRun] = {}
        self._sends: dict[int, list[tuple[str, tuple[int, str]]]] = {}
        self._graph = self._compile()
        self.running_nodes = 0

    def _compile(self) -> Any:
        specs = self._registry.for_plane(self.plane)
        builder = StateGraph(_BatchState)
        for spec in specs:
            builder.add_node(
                spec.name,
                self._make_node(spec),
                retry_policy=RetryPolicy(
                    initial_interval=spec.retry.backoff_s,
                    backoff_factor=spec.retry.backoff_factor,
                    max_interval=spec.retry.max_backoff_s,
                    max_attempts=max(spec.retry.max_attempts, OUTAGE_ATTEMPTS),
                    jitter=False,  # LangGraph's jitter adds up to a whole second
                    retry_on=lambda exc: isinstance(exc, _RetryAttempt),
                ),
            )
            builder.add_edge(spec.name, END)
        self._task_names = frozenset(spec.name for spec in specs)
        builder.add_node(MISSING_TASK_NODE, self._make_node(None))
        builder.add_edge(MISSING_TASK_NODE, END)
        builder.add_conditional_edges(START, self._route, [s.name for s in specs] + [MISSING_TASK_NODE])
        return builder.compile()

    async def _route(self, state: _BatchState) -> list[Send]:
        # async, so LangGraph does not hop to a thread to call it
        return [Send(task, key) for task, key in self._sends.pop(state["batch"])]

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    @functools.cache
    def _task_logger(name: str) -> logging.Logger:
        return logging.getLogger(f"dualplane.task.{name}")  # getLogger takes a lock: once per task

    async def in_task_thread(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` in a thread of the sync-task pool (to see what a task sees)."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn)

    # -- running a batch -------------------------------------------------------------

    async def run(self, runs: list[JobRun]) -> None:
        """Run the plans of ``runs`` in one LangGraph invocation; each run's ``done``
        resolves as soon as its own nodes are terminal and mirrored."""
        sends = []
        for run in runs:
            self._runs[id(run)] = run
            for node_id in run.plan:
                task = run.by_id[node_id].task
                # LangGraph drops a Send to a node it does not have, and the run would wait forever
                sends.append((task if task in self._task_names else MISSING_TASK_NODE, (id(run), node_id)))
        if not sends:
            return
        self._sends[id(sends)] = sends
        try:
            async for chunk in self._graph.astream({"batch": id(sends)}, stream_mode="custom"):
                self._apply(chunk)
        finally:
            self._sends.pop(id(sends), None)
            for run in runs:
                self._runs.pop(id(run), None)

    def _make_node(self, spec: TaskSpec | None) -> Callable[[tuple[int, str]], Any]:
        async def node(key: tuple[int, str]) -> None:
            run = self._runs[key[0]]
            await self._run_node(run, run.by_id[key[1]], spec, get_stream_writer())

        node.__name__ = f"task_{spec.name}" if spec is not None else MISSING_TASK_NODE
        return node

    async def _run_node(self, run: JobRun, node: Node, spec: TaskSpec | None, write: Callable[[Any], None]) -> None:
        # this LangGraph task's own context: every line logged below carries the ids
        logs.bind(job_id=run.job_id, node_id=node.id, request_id=run.request_id, plane=self.plane,
                  worker=self.worker_id)
        if run.admitted is not None and not await asyncio.shield(run.admitted):
            return
        for need in node.needs:
            if need in run.finished:
                await asyncio.shield(run.finished[need])
        if node.status in (NodeStatus.succeeded, NodeStatus.failed, NodeStatus.skipped, NodeStatus.cancelled):
            return  # a LangGraph retry after the end was already written
        reason = blocked_reason(node, run.by_id)
        if reason is not None:
            write(_chunk(run, node, "finished", status="skipped", reason=reason))
            return
        if run.cancel.is_set():
            write(_chunk(run, node, "finished", status="cancelled", reason=JOB_CANCELLED))
            return
        if spec is None:  # the control plane's catalog has the task, this process's does not
            error = {"type": "TaskNotAvailable", "transient": False,
                     "message": f"{self.worker_id} ({self.plane} plane) has no task {node.task!r}: "
                                "its catalog differs from the control plane's"}
            write(_chunk(run, node, "finished", status="failed", error=error))
            return
        unmet = self._unmet_requirements(node) if self._unmet_requirements else None
        if unmet is not None:  # sent to this pool by hand: fail loudly rather than run it on the wrong device
            error = {"type": "RequirementsNotMet", "message": unmet, "transient": False}
            write(_chunk(run, node, "finished", status="failed", error=error))
            return
        async with self._slots:
            if run.owned is not None and not await run.owned(run):
                run.stale = True
                run.cancel.set()
                write(_chunk(run, node, "finished", status="cancelled", reason=TAKEN_OVER))
                return
            await self._attempt(run, node, spec, write)

    async def _attempt(self, run: JobRun, node: Node, spec: TaskSpec, write: Callable[[Any], None]) -> None:
        attempt = node.attempts + 1
        write(_chunk(run, node, "running", attempt=attempt))
        started = time.perf_counter()
        self.running_nodes += 1
        outcome = "retrying"
        output: dict[str, Any] | None = None
        try:
            output = await self._call_task(run, node, spec, attempt, write)
        except TaskCancelled as exc:
            outcome = "cancelled"
            write(_chunk(run, node, "finished", status=outcome, reason=str(exc)))
        except Exception as exc:  # a task may raise anything; the node records it
            # the traceback holds the task's frames and whatever they built (a model being
            # trained, in VRAM on a GPU): let go of it before the backoff and the next attempt
            traceback.clear_frames(exc.__traceback__)  # the lines stay for the log below
            retrying = (spec.retry.should_retry(exc, attempt) or _outlasts(exc, attempt)) and not run.cancel.is_set()
            if is_out_of_memory(exc) and self._models is not None:
                dropped = await asyncio.to_thread(self._models.free_memory)
                log.warning("node %s (%s) ran out of memory: %d warm models dropped, cached memory freed",
                            node.id, spec.name, dropped)
            if retrying:  # LangGraph logs the retry with its traceback
                log.warning("node %s (%s) attempt %d raised %s: %s; retrying", node.id, spec.name, attempt,
                            type(exc).__name__, exc)
                write(_chunk(run, node, "retrying", error=_error(exc, transient=True),
                             delay_s=spec.retry.delay_s(attempt)))
                raise _RetryAttempt from exc
            if not isinstance(exc, _InvalidParams):  # the node's error says all of a params error
                log.error("node %s (%s) attempt %d raised %s", node.id, spec.name, attempt, type(exc).__name__,
                          exc_info=exc)
            outcome = "failed"
            write(_chunk(run, node, "finished", status=outcome,
                         error=_error(exc, transient=spec.retry.is_transient(exc))))
        else:
            outcome = "succeeded"
            write(_chunk(run, node, "finished", status=outcome, output=output))
        finally:
            self.running_nodes -= 1
            self._attempt_ended(node, spec, attempt, outcome, time.perf_counter() - started,
                                output if outcome == "succeeded" else None)

    def _attempt_ended(self, node: Node, spec: TaskSpec, attempt: int, outcome: str, elapsed_s: float,
                       output: dict[str, Any] | None = None) -> None:
        if self._on_node_finished is not None:
            self._on_node_finished(spec.name, outcome, elapsed_s, output)
        if log.isEnabledFor(logging.INFO):
            log.info("node %s (%s) attempt %d %s in %.3fs", node.id, spec.name, attempt, outcome, elapsed_s)

    async def _call_task(
        self, run: JobRun, node: Node, spec: TaskSpec, attempt: int, write: Callable[[Any], None]
    ) -> dict[str, Any]:
        try:
            params = spec.params.model_validate(resolve_refs(node.params, run.by_id))
        except (pydantic.ValidationError, KeyError) as exc:
            raise _InvalidParams(str(exc)) from None
        loop = asyncio.get_running_loop()
        ctx_write = _node_writer(run, node, write, threaded=not spec.is_async, loop=loop)
        ctx = TaskContext(
            job_id=run.job_id, node_id=node.id, attempt=attempt, write=ctx_write, cancelled=run.cancel,
            artifacts=self._artifacts, models=self._models, describe_worker=self._describe_worker, loop=loop,
            logger=self._task_logger(spec.name), url_policy=self._url_policy,
            may_read=functools.partial(check_read, user=run.user, job_id=run.job_id, job_owner=self._bridge.job_owner),
            owned=functools.partial(run.owned, run) if run.owned is not None else None,
        )
        timeout_s = node.timeout_s or spec.timeout_s
        if spec.is_async:
            call = spec.fn(ctx, params)
        else:
            # run_in_executor does not carry context variables: enter the node's context
            call = loop.run_in_executor(self._threads, contextvars.copy_context().run, spec.fn, ctx, params)
        try:
            result = await asyncio.wait_for(call, timeout_s) if timeout_s else await call
        except TimeoutError:
            run_cancel_thread = not spec.is_async
            if run_cancel_thread:
                ctx._cancelled = threading.Event()  # the thread keeps its own flag: stop it
                ctx._cancelled.set()
            raise NodeTimeout(f"attempt {attempt} ran past {timeout_s} s") from None
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise TypeError(f"task {spec.name!r} returned {type(result).__name__}, expected a dict")
        return result

    # -- mirroring -------------------------------------------------------------------

    def _apply(self, chunk: dict[str, Any]) -> None:
        """Apply one chunk to the job's state and mirror the change (one atomic Redis step)."""
        run = self._runs.get(chunk["run"])
        if run is None:
            return
        node = run.by_id[chunk["node"]]
        kind = chunk["kind"]
        change = _transition(run.state, node, kind, chunk)
        reply = self._bridge.emit_nowait(run.job_id, change, fence=run.fence)
        reply.add_done_callback(lambda f, run=run: _check_fence(f, run))
        if kind == "finished":
            if node.id in run.finished:
                run.finished[node.id].set_result(None)
            run.remaining -= 1
            if run.remaining == 0 and not run.done.done():
                run.done.set_result(None)
                if run.on_done is not None:
                    run.on_done(run)


class _InvalidParams(ValueError):
    """Params did not validate once their ``$ref`` values were filled in."""


def _chunk(run: JobRun, node: Node, kind: str, **data: Any) -> dict[str, Any]:
    return {"run": id(run), "node": node.id, "kind": kind, **data}


def _node_writer(
    run: JobRun, node: Node, write: Callable[[Any], None], *, threaded: bool, loop: asyncio.AbstractEventLoop
) -> Callable[[dict[str, Any]], None]:
    def send(payload: dict[str, Any]) -> None:
        write(_chunk(run, node, **payload))

    if not threaded:
        return send

    # LangGraph's writer reads its run config from context variables, which a callback
    # scheduled from another thread does not carry: run it in the node's own context.
    node_context = contextvars.copy_context()

    def send_from_thread(payload: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(send, payload, context=node_context)

    return send_from_thread


def _error(exc: BaseException, *, transient: bool) -> dict[str, Any]:
    if isinstance(exc, _InvalidParams):
        kind = "InvalidParams"
    elif isinstance(exc, ObjectNotFound):  # one name for "missing" and "not yours", whatever raised it
        kind = "ObjectNotFound"
    else:
        kind = type(exc).__name__
    return {"type": kind, "message": str(exc) or kind, "transient": transient}


def _transition(state: JobState, node: Node, kind: str, chunk: dict[str, Any]) -> Mutation:
    """The state machine's transition for one chunk a node wrote."""
    if kind == "running":
        return state.running(node, chunk["attempt"])
    if kind == "progress":
        return state.progress(node, chunk["progress"], chunk.get("message"))
    if kind == "data":
        return state.data(node, chunk["data"], chunk.get("message"))
    if kind == "artifact":
        return state.artifact(node, chunk["artifact"])
    if kind == "retrying":
        return state.retrying(node, chunk["error"], chunk["delay_s"])
    return state.finished(node, chunk["status"], output=chunk.get("output"), error=chunk.get("error"),
                          reason=chunk.get("reason"))


def _check_fence(future: asyncio.Future[Any], run: JobRun) -> None:
    if future.cancelled():
        return
    if future.exception() is not None:
        run.unmirrored = True
        log.error("mirroring job %s failed: %s", run.job_id, future.exception())
        return
    if future.result() == -1 and not run.stale:
        run.stale = True
        run.cancel.set()  # another owner took over: stop spending work on it
        log.warning("job %s: this plane's ownership is stale; stopping its nodes", run.job_id)
