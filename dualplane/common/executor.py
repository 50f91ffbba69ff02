"""Runs the nodes of one plane, many jobs per LangGraph invocation, without lockstep.

A batch of runs becomes one invocation of the plane's :class:`~dualplane.common.langgraph_batch.BatchGraph`
(the only module that knows LangGraph) in which every planned node is started at once and
awaits its *own* needs (asyncio futures): a node starts the moment its needs are done, a
skipped parent never stalls a join. Everything a node reports (running, progress, data,
artifacts, its end) travels through LangGraph's stream writer; :meth:`Executor.run` applies
each chunk to the job's state machine (:mod:`dualplane.common.job_state`), mirrors the change
through the bridge, in order, and yields each run as soon as its plan is done — the consumer
hands it on in that same tick, so the last write and the handoff share one script call.

Attempts and their backoff are the executor's own (:meth:`_attempts`, with the task's
:class:`~dualplane.common.retry.Retry`): LangGraph runs each node once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from dualplane.common import logs
from dualplane.common.access import check_read
from dualplane.common.bridge import Bridge, Message
from dualplane.common.context import ModelProvider, TaskContext
from dualplane.common.errors import NodeTimeout, ObjectNotFound, TaskCancelled, Unavailable
from dualplane.common.graph import blocked_reason, resolve_refs
from dualplane.common.hooks import HookChain, Hooks, NodeRefused
from dualplane.common.job_state import JOB_CANCELLED, TAKEN_OVER, JobState, Mutation
from dualplane.common.langgraph_batch import BatchGraph, Write
from dualplane.common.models import Graph, Node
from dualplane.common.retry import is_out_of_memory

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore
    from dualplane.common.registry import TaskRegistry, TaskSpec
    from dualplane.common.url_policy import UrlPolicy

log = logging.getLogger("dualplane.executor")

#: Attempts a node gets when a service it needs is down (the object store), whatever its own
#: retry policy: with the default backoff that rides out about a minute of outage.
OUTAGE_ATTEMPTS = 8


def _outlasts(exc: BaseException, attempt: int) -> bool:
    """An outage is not the task's fault: it earns retries beyond the task's own policy."""
    return isinstance(exc, Unavailable) and attempt < OUTAGE_ATTEMPTS


class _Retry(Exception):
    """An attempt failed and earns another one after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self.delay_s = delay_s


@dataclass(eq=False)
class JobRun:
    """One job being run on this plane: its state, the plan and the ownership fence.

    Its life: the consumer makes it once its claim came back (``Consumer._accept``);
    :meth:`Executor.run` runs its plan and yields it when the plan is done; the consumer then
    reads the outcome fields and hands the job on (``Consumer._finish``) and forgets it. The
    fields come in three groups: what the executor runs, the consumer's delivery record (the
    executor never reads it), and the outcomes the executor sets for the consumer.

    ``handoff_seq`` says which handoff brought the job here; ``fence`` is the token this
    plane's claim took: every write of the run is checked against it, so a plane that lost
    the job to a reclaim cannot write any more."""

    # -- what the executor runs
    job_id: str
    graph: Graph
    plan: list[str]
    #: The plane running it (every event it writes says so).
    plane: str = "control"
    fence: int = 0
    #: The job's owner: every object key a task reads for the job must be theirs.
    user: str | None = None
    request_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    #: Asked (with the run) before each node starts: is the job still this plane's? (False:
    #: another consumer reclaimed it while this one was paused, and the node may have
    #: succeeded there.) A bound method of the consumer, not a partial of the run: a run that
    #: refers to itself lives until a full collection, and the dispatch loop makes thousands.
    owned: Callable[[JobRun], Awaitable[bool]] | None = None

    # -- the consumer's delivery record
    handoff_seq: int = 0
    message: Message | None = None
    #: When the job was submitted (unix s, from the job hash), for the job duration metric.
    created_at: float | None = None

    # -- outcomes, set by the executor while it runs the plan
    #: The job is no longer this plane's (a write met another fence, or ``owned`` said so):
    #: nothing more is written from here.
    stale: bool = False
    #: A write of this run did not reach Redis (an outage): the job hash may lack what the
    #: run did, so it must not hand on from here; its message is reclaimed and re-run instead.
    unmirrored: bool = False

    def __post_init__(self) -> None:
        #: The job's state machine: every change of the run goes through it.
        self.state = JobState(self.job_id, self.graph, plane=self.plane)
        self.by_id: dict[str, Node] = self.state.by_id
        # futures only where another planned node waits on them (most plans have one node)
        awaited = {need for nid in self.plan for need in self.by_id[nid].needs}.intersection(self.plan)
        loop = asyncio.get_running_loop()
        self.finished: dict[str, asyncio.Future[None]] = {nid: loop.create_future() for nid in awaited}
        self.remaining = len(self.plan)

    @property
    def done(self) -> bool:
        """Every planned node has ended (and its end was sent to the bridge)."""
        return self.remaining == 0


class Executor:
    """Runs plans of one plane.

    :param registry: the task catalog; only tasks of ``plane`` are compiled in.
    :param plane: ``control`` or ``python``.
    :param bridge: where state changes are mirrored.
    :param concurrency: nodes running at once (waiting for needs does not count).
    :param artifacts: artifact store offered to tasks.
    :param hooks: metrics, the requirements check, task-thread set-up (see :class:`Hooks`).
    :param models: the models offered to tasks as ``ctx.models`` (data plane).
    :param describe_worker: the worker's capability manifest, as ``ctx.describe_worker``.
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
        hooks: Sequence[Hooks] = (),
        worker_id: str | None = None,
        models: ModelProvider | None = None,
        describe_worker: Callable[[], dict[str, Any]] | None = None,
        url_policy: UrlPolicy | None = None,
    ) -> None:
        self.plane = plane
        self._url_policy = url_policy
        self.worker_id = worker_id or plane
        self._bridge = bridge
        self._hooks = HookChain(hooks)
        self._slots = asyncio.Semaphore(concurrency)
        initializer = functools.partial(self._hooks.emit, "init_thread") if self._hooks.has("init_thread") else None
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"{plane}-task",
                                           initializer=initializer)
        self._artifacts = artifacts
        self._models = models
        self._describe_worker = describe_worker
        self._specs = {spec.name: spec for spec in registry.for_plane(plane)}
        self._graph = BatchGraph(self._specs, self._run_node)
        self.running_nodes = 0

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

    async def run(self, runs: list[JobRun]) -> AsyncIterator[JobRun]:
        """Run the plans of ``runs`` in one LangGraph invocation; yield each run as soon as its
        own nodes have ended and their ends were sent to the bridge. The caller hands it on
        before asking for the next one: its handoff joins the pipeline of the last node's end."""
        work = [(run.by_id[node_id].task, run, node_id) for run in runs for node_id in run.plan]
        async for chunk in self._graph.stream(work):
            run = chunk["run"]
            self._apply(run, chunk)
            if chunk["kind"] == "finished" and run.done:
                yield run

    async def _run_node(self, task: str | None, run: JobRun, node_id: str, write: Write) -> None:
        node = run.by_id[node_id]
        # this LangGraph task's own context: every line logged below carries the ids
        logs.bind(job_id=run.job_id, node_id=node.id, request_id=run.request_id, plane=self.plane,
                  worker=self.worker_id)
        for need in node.needs:
            if need in run.finished:
                await asyncio.shield(run.finished[need])
        spec = self._specs.get(task) if task is not None else None
        ended = self._refusal(run, node, spec)
        if ended is not None:
            write(_chunk(run, node, "finished", **ended))
            return
        assert spec is not None
        while True:
            async with self._slots:
                if run.owned is not None and not await run.owned(run):
                    run.stale = True
                    run.cancel.set()
                    write(_chunk(run, node, "finished", status="cancelled", reason=TAKEN_OVER))
                    return
                try:
                    await self._attempt(run, node, spec, write)
                    return
                except _Retry as retry:
                    delay_s = retry.delay_s
            await asyncio.sleep(delay_s)  # a backoff holds no slot
            if run.cancel.is_set():
                write(_chunk(run, node, "finished", status="cancelled", reason=JOB_CANCELLED))
                return

    def _refusal(self, run: JobRun, node: Node, spec: TaskSpec | None) -> dict[str, Any] | None:
        """How a node ends without running (its chunk's fields), or None when it may run."""
        reason = blocked_reason(node, run.by_id)
        if reason is not None:
            return {"status": "skipped", "reason": reason}
        if run.cancel.is_set():
            return {"status": "cancelled", "reason": JOB_CANCELLED}
        if spec is None:  # the control plane's catalog has the task, this process's does not
            return {"status": "failed", "error": {
                "type": "TaskNotAvailable", "transient": False,
                "message": f"{self.worker_id} ({self.plane} plane) has no task {node.task!r}: "
                           "its catalog differs from the control plane's"}}
        try:
            self._hooks.before_node(node, spec)
        except NodeRefused as refused:  # sent to this pool by hand: fail loudly rather than run it wrongly
            return {"status": "failed", "error": {"type": refused.kind, "message": str(refused), "transient": False}}
        return None

    async def _attempt(self, run: JobRun, node: Node, spec: TaskSpec, write: Write) -> None:
        """One attempt; raises :class:`_Retry` when it failed and earns another."""
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
            if retrying:
                delay_s = spec.retry.delay_s(attempt)
                log.warning("node %s (%s) attempt %d raised %s: %s; retrying in %.2fs", node.id, spec.name, attempt,
                            type(exc).__name__, exc, delay_s)
                write(_chunk(run, node, "retrying", error=_error(exc, transient=True), delay_s=delay_s))
                raise _Retry(delay_s) from None
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
            elapsed_s = time.perf_counter() - started
            self._hooks.emit("after_attempt", spec, outcome, elapsed_s, output if outcome == "succeeded" else None)
            if log.isEnabledFor(logging.INFO):
                log.info("node %s (%s) attempt %d %s in %.3fs", node.id, spec.name, attempt, outcome, elapsed_s)

    async def _call_task(self, run: JobRun, node: Node, spec: TaskSpec, attempt: int, write: Write) -> dict[str, Any]:
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
            if not spec.is_async:
                ctx._cancelled = threading.Event()  # the thread keeps its own flag: stop it
                ctx._cancelled.set()
            raise NodeTimeout(f"attempt {attempt} ran past {timeout_s} s") from None
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise TypeError(f"task {spec.name!r} returned {type(result).__name__}, expected a dict")
        return result

    # -- mirroring -------------------------------------------------------------------

    def _apply(self, run: JobRun, chunk: dict[str, Any]) -> None:
        """Apply one chunk to the job's state and mirror the change (one atomic Redis step)."""
        node = run.by_id[chunk["node"]]
        kind = chunk["kind"]
        change = _transition(run.state, node, kind, chunk)
        # a stale owner writes nothing: where its fence moved on the write would be refused, and
        # where its lease went with a failover (the new primary never saw its delivery) the
        # fence still holds and the stop it makes here must not land as the job's outcome
        if not run.stale:
            reply = self._bridge.emit_nowait(run.job_id, change, fence=run.fence)
            reply.add_done_callback(functools.partial(_check_fence, run=run))
        if kind == "finished":
            if node.id in run.finished:
                run.finished[node.id].set_result(None)
            run.remaining -= 1


class _InvalidParams(ValueError):
    """Params did not validate once their ``$ref`` values were filled in."""


def _chunk(run: JobRun, node: Node, kind: str, **data: Any) -> dict[str, Any]:
    # the run itself, not a key to it: chunks stay in this process (LangGraph's stream queue)
    return {"run": run, "node": node.id, "kind": kind, **data}


def _node_writer(
    run: JobRun, node: Node, write: Write, *, threaded: bool, loop: asyncio.AbstractEventLoop
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
