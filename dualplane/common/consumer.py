"""The loop both planes run: read handoffs from a lane's stream, run the lane's nodes,
hand the graph on (or finish the job) and acknowledge — in one atomic step.

``run`` → ``_poll`` → ``_start`` → (executor) → ``_finish``. Reclaiming abandoned
messages, the cancel watch and the lease heartbeat run beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson
import pydantic

from dualplane.common import logs
from dualplane.common.bridge import (
    RUNTIME_FIELDS,
    Bridge,
    Claim,
    LeaseKeeper,
    Message,
    event_body,
    node_field,
    node_state,
    parse_claim,
)
from dualplane.common.errors import BridgeClosed
from dualplane.common.executor import Executor, JobRun
from dualplane.common.graph import (
    is_terminal,
    job_outcome,
    lane_of,
    next_lane,
    plan_for_lane,
    propagate_skips,
)
from dualplane.common.models import Graph, Handoff, Node, NodeStatus
from dualplane.common.telemetry import PlaneMetrics

log = logging.getLogger("dualplane.consumer")

#: Cancel requests are pushed (the ``cancels`` channel); the flags of in-flight jobs are also
#: read this often, for a request published while the subscription was down.
DEFAULT_CANCEL_POLL_S = 2.0
#: A pushed cancel for a job not in flight here is kept this long: its claim may be on the
#: way, having read the flag just before the request set it.
RECENT_CANCEL_S = 30.0


class Consumer:
    """Consumes one lane (``control`` or ``python:<pool>``).

    :param bridge: connected Redis bridge.
    :param executor: runs the nodes of this lane's plane.
    :param lane: which stream to read.
    :param name: consumer name in the group (unique per process).
    :param concurrency: most jobs held at once (messages read but not yet handed on).
    :param metrics: counters and histograms of this plane.
    """

    def __init__(
        self,
        bridge: Bridge,
        executor: Executor,
        *,
        lane: str,
        name: str,
        concurrency: int,
        metrics: PlaneMetrics | None = None,
        cancel_poll_s: float = DEFAULT_CANCEL_POLL_S,
    ) -> None:
        self.bridge = bridge
        self.executor = executor
        self.lane = lane
        self.name = name
        self.stream = bridge.keys.stream_for_lane(lane)
        self.plane = "control" if lane == "control" else "python"
        self._concurrency = concurrency
        self._metrics = metrics or PlaneMetrics(None, self.plane)
        self._cancel_poll_s = cancel_poll_s
        self._inflight: dict[str, JobRun] = {}  # message id -> run
        self._recent_cancels: dict[str, float] = {}  # job id -> when its cancel was pushed
        self._batches: set[asyncio.Task[None]] = set()
        self._finishers: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lease = LeaseKeeper(bridge.config.redis_url, bridge.keys, name, bridge.heartbeat_s)
        self._side_tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    @property
    def busy(self) -> int:
        return len(self._inflight)

    # -- main loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`."""
        logs.bind(plane=self.plane, worker=self.name)  # inherited by every task started below
        await self.bridge.ensure_group(self.stream)
        self._lease.start()
        self._side_tasks = [asyncio.create_task(self._reclaim_loop()), asyncio.create_task(self._cancel_loop())]
        self.started.set()
        try:
            while not self._stopping.is_set():
                await self._poll()
        finally:
            self._stopping.set()  # the side loops end on it even if a cancellation is swallowed
            for task in self._side_tasks:
                task.cancel()
            await asyncio.gather(*self._side_tasks, return_exceptions=True)

    async def _poll(self) -> None:
        free = self._concurrency - len(self._inflight)
        if free <= 0:
            self._slot_freed.clear()
            await self._wait_or_stop(self._slot_freed.wait(), timeout_s=None)
            return
        try:
            messages = await self.bridge.read(
                self.stream, self.name, count=min(free, self.bridge.config.read_batch),
                block_ms=self.bridge.config.read_block_ms,
            )
        except BridgeClosed as exc:
            log.error("%s: %s; retrying in 1 s", self.name, exc)
            await self._wait_or_stop(asyncio.sleep(1.0), timeout_s=1.0)
            return
        if messages and not self._stopping.is_set():
            await self._start(messages, {})
        elif messages:
            await self.bridge.release(self.stream, self.name, [m.id for m in messages])

    async def _wait_or_stop(self, awaitable: Awaitable[Any], *, timeout_s: float | None) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        work = asyncio.ensure_future(awaitable)
        await asyncio.wait({stop, work}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, work):
            task.cancel()

    # -- starting work ---------------------------------------------------------------

    async def _start(self, messages: list[Message], delivery_counts: dict[str, int]) -> None:
        """Parse, fence-check and plan a batch of messages, then run their plans together.

        A first delivery is planned from the graph it carries and handed to the executor
        while its claim is still on the way (the claim's round trip overlaps LangGraph's
        start-up); its nodes wait for the claim to confirm the plan before doing anything.
        A re-delivery, or a claim that disagrees, goes the careful way: claim, merge, plan.
        """
        parsed = [(m, self._parse(m, delivery_counts.get(m.id, 1))) for m in messages]
        valid = [(m, h) for m, h in parsed if h is not None]
        for message, _ in valid:
            self._lease.hold(message.stream, message.id)
        pending_claims = [self.bridge.claim_nowait(h.job_id, h.handoff_seq) for _, h in valid]
        early = {i: run for i, (m, h) in enumerate(valid)
                 if delivery_counts.get(m.id, 1) == 1 and (run := _speculative_run(m, h, self.lane)).plan}
        self._launch(list(early.values()))
        replies = await asyncio.gather(*pending_claims)
        runs: list[JobRun] = []
        for i, ((message, handoff), reply) in enumerate(zip(valid, replies, strict=True)):
            claim = parse_claim(reply)
            run = early.get(i)
            if run is not None and _confirms(run, claim):
                self._admit(run, claim)
                continue
            if run is not None:
                run.admitted.set_result(False)  # its nodes return without a trace
            accepted = await self._accept(message, handoff, claim)
            if accepted is not None:
                runs.append(accepted)
        self._launch(runs)

    def _launch(self, runs: list[JobRun]) -> None:
        if runs:
            task = asyncio.create_task(self._run_batch(runs))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _admit(self, run: JobRun, claim: Claim) -> None:
        run.job_status, run.created_at = claim.status, claim.created_at
        if run.job_id in self._recent_cancels:
            run.cancel.set()
        if run.message is not None:
            self._inflight[run.message.id] = run
        run.on_done = self._finish
        run.admitted.set_result(True)

    def _parse(self, message: Message, deliveries: int) -> Handoff | None:
        """The handoff in a message, or None after dead-lettering what cannot be processed."""
        try:
            if message.raw is None:
                raise ValueError("message has no 'm' field")
            if deliveries > self.bridge.config.max_deliveries:
                raise _TooManyDeliveries(
                    f"delivered {deliveries} times (limit {self.bridge.config.max_deliveries}); "
                    "its consumers kept dying or timing out"
                )
            return Handoff.model_validate_json(message.raw)
        except (ValueError, pydantic.ValidationError) as exc:
            reason = _reason(exc)
            job_id = _peek_job_id(message.raw) if message.raw else None
            log.error("%s: dead-lettering %s (job %s): %s", self.name, message.id, job_id, reason)
            self._metrics.dead_letters.labels(stream=self.lane).inc()
            self._spawn(self.bridge.dead_letter(message, reason, job_id))
            return None

    async def _accept(self, message: Message, handoff: Handoff, claim: Claim) -> JobRun | None:
        if not claim.ok:
            self._lease.drop(message.stream, message.id)
            if claim.gone:
                await self.bridge.dead_letter(message, "job no longer exists (expired or purged)", handoff.job_id)
            else:
                self._metrics.stale_handoffs.inc()
                log.warning("%s: rejected stale handoff %s of job %s", self.name, handoff.handoff_seq, handoff.job_id)
                await self.bridge.ack(message.stream, [message.id])
            return None
        graph = _merge_states(handoff.graph, claim.node_states or {})
        plan = [n.id for n in plan_for_lane(graph, self.lane)] if not claim.cancel_requested else []
        run = JobRun(
            job_id=handoff.job_id, graph=graph, plan=plan, fence=handoff.handoff_seq, message=message,
            request_id=handoff.request_id, job_status=claim.status, created_at=claim.created_at,
        )
        if claim.cancel_requested or run.job_id in self._recent_cancels:
            run.cancel.set()
        self._inflight[message.id] = run
        if plan:
            run.on_done = self._finish
        else:  # nothing to run here (cancelled, or all skipped): hand on at once
            self._finish(run)
        return run

    async def _run_batch(self, runs: list[JobRun]) -> None:
        try:
            await self.executor.run(runs)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in the executor must not strand the messages
            log.exception("%s: executor failed; releasing %d jobs for another attempt", self.name, len(runs))
            stranded = [r for r in runs if not r.done.done()]
            for run in stranded:
                self._forget(run)
            await self.bridge.release(self.stream, self.name, [r.message.id for r in stranded if r.message])

    # -- finishing -------------------------------------------------------------------

    def _finish(self, run: JobRun) -> None:
        """Hand the graph to the next lane, or finish the job; ack the message atomically.

        Synchronous on purpose: called from the executor as the last node's end is
        mirrored, the handoff is merged into that same script call.
        """
        graph = run.graph
        events: list[tuple[str, bytes]] = []
        fields: list[Any] = []
        if run.cancel.is_set() and not run.stale:
            _cancel_rest(run, events, fields, self.plane)
        for node in propagate_skips(graph):
            events.append(event_body("status", run.job_id, node_id=node.id, status="skipped", message=node.reason,
                                     plane=self.plane))
            fields += [node_field(node.id), node_state(node)]
        outcome = job_outcome(graph)
        target = None if outcome else next_lane(graph)
        if outcome:
            fields += ["status", outcome, "owner", "none", "finished_at", time.time(), "progress", 1.0]
            events.append(event_body("status", run.job_id, status=outcome, plane=self.plane))
        else:
            _queue_ready(run, target, events, fields, self.plane)
            fields += ["owner", "control" if target == "control" else "python"]
        reply = self.bridge.handoff_nowait(
            run.job_id, expected_seq=run.fence, source=run.message, target_lane=target, graph=graph,
            request_id=run.request_id, sent_by=self.name, fields=fields, events=events,
        )
        reply.add_done_callback(lambda f: self._handed_off(run, f, outcome, target))

    def _handed_off(self, run: JobRun, reply: asyncio.Future[Any], outcome: str | None, target: str | None) -> None:
        if reply.cancelled():
            return
        with logs.bound(job_id=run.job_id, request_id=run.request_id):
            if reply.exception() is not None:  # the message stays pending and is reclaimed after the lease
                log.error("handoff of job %s failed: %s", run.job_id, reply.exception())
            else:
                self._count_finish(run, outcome, target, int(reply.result()))
                if log.isEnabledFor(logging.INFO):
                    log.info("job %s %s", run.job_id, f"finished {outcome}" if outcome else f"handed to {target}")
        self._forget(run)

    def _count_finish(self, run: JobRun, outcome: str | None, target: str | None, seq: int) -> None:
        if seq == -1:
            self._metrics.stale_handoffs.inc()
        elif outcome:
            self._metrics.job_finished(run.graph, outcome, run.created_at)
        else:
            self._metrics.handoffs.labels(to=target or "").inc()

    def _forget(self, run: JobRun) -> None:
        if run.message is not None:
            self._inflight.pop(run.message.id, None)
            self._lease.drop(run.message.stream, run.message.id)
        self._slot_freed.set()

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._finishers.add(task)
        task.add_done_callback(self._finishers.discard)

    # -- side loops ------------------------------------------------------------------

    async def _every(self, interval_s: float) -> bool:
        """Wait one interval; False once the consumer is stopping.

        The side loops end on the stop flag, not only on task cancellation: a client library
        that turns a cancellation into a connection error (caught below as a Redis hiccup)
        would otherwise leave a loop sleeping forever after stop.
        """
        try:
            await asyncio.wait_for(self._stopping.wait(), interval_s)
        except TimeoutError:
            return True
        return False

    async def _reclaim_loop(self) -> None:
        """Take over messages whose consumer died (idle past the lease)."""
        interval_s = max(0.05, self.bridge.config.lease_s / 2)
        while await self._every(interval_s):
            free = self._concurrency - len(self._inflight)
            if free <= 0:
                continue
            try:
                messages, counts = await self.bridge.reclaim(self.stream, self.name, count=free)
            except Exception as exc:  # keep reclaiming after a Redis hiccup
                log.error("%s: reclaim failed: %s", self.name, exc)
                continue
            if messages:
                self._metrics.reclaimed.inc(len(messages))
                log.warning("%s: reclaimed %d abandoned messages", self.name, len(messages))
                await self._start(messages, counts)

    async def _cancel_loop(self) -> None:
        """Propagate cancel requests into running jobs (tasks see ``ctx.cancelled``).

        Requests are pushed on the ``cancels`` channel, so a running node stops within a step
        while the event loop sleeps: a loop woken on a timer takes the GIL from a Python-bound
        task thread every time (a 0.1 s flag poll cost generate_music several % in
        bench/gpu_tasks.py). The flags are also read every ``cancel_poll_s`` and right after
        each (re)subscription, for a request published while the subscription was down.
        """
        pubsub: Any = None
        next_poll = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if pubsub is None:
                        pubsub = await self.bridge.subscribe_cancels()
                        next_poll = 0.0
                    wait_s = next_poll - time.monotonic()
                    if wait_s > 0:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait_s)
                        if message is not None and message["type"] == "message":
                            self._cancel_pushed(message["data"].decode())
                        continue
                    next_poll = time.monotonic() + self._cancel_poll_s
                    await self._poll_cancel_flags()
                except Exception as exc:  # keep listening after a Redis hiccup
                    log.error("%s: cancel subscription failed: %s", self.name, exc)
                    await _close_quietly(pubsub)
                    pubsub = None
                    if not await self._every(1.0):
                        break
        finally:
            await _close_quietly(pubsub)

    def _cancel_pushed(self, job_id: str) -> None:
        now = time.monotonic()
        self._recent_cancels[job_id] = now
        while self._recent_cancels:  # oldest first (insertion order)
            oldest, at = next(iter(self._recent_cancels.items()))
            if now - at < RECENT_CANCEL_S:
                break
            del self._recent_cancels[oldest]
        for run in self._inflight.values():
            if run.job_id == job_id:
                run.cancel.set()

    async def _poll_cancel_flags(self) -> None:
        runs = [r for r in self._inflight.values() if not r.cancel.is_set()]
        if runs:
            flagged = await self.bridge.cancel_flags([r.job_id for r in runs])
            for run in runs:
                if run.job_id in flagged:
                    run.cancel.set()

    # -- shutdown --------------------------------------------------------------------

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop reading; let running work finish for ``grace_s``; then release the rest so
        another consumer takes it over at once. Nothing is lost either way."""
        self._stopping.set()
        deadline = time.monotonic() + grace_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        leftover = list(self._inflight.values())
        if leftover:
            log.warning("%s: releasing %d unfinished jobs", self.name, len(leftover))
            for run in leftover:
                run.cancel.set()
            for task in list(self._batches):
                task.cancel()
            await asyncio.gather(*self._batches, return_exceptions=True)
            await self.bridge.release(self.stream, self.name, [r.message.id for r in leftover if r.message])
            for run in leftover:
                self._forget(run)
        await asyncio.gather(*self._finishers, return_exceptions=True)
        self._lease.stop()
        self.executor.close()


class _TooManyDeliveries(ValueError):
    """The delivery limit was exceeded."""


def _speculative_run(message: Message, handoff: Handoff, lane: str) -> JobRun:
    """A run planned from the graph the message carries, not yet admitted."""
    plan = [n.id for n in plan_for_lane(handoff.graph, lane)]
    run = JobRun(job_id=handoff.job_id, graph=handoff.graph, plan=plan, fence=handoff.handoff_seq,
                 message=message, request_id=handoff.request_id)
    run.admitted = asyncio.get_running_loop().create_future()
    return run


def _confirms(run: JobRun, claim: Claim) -> bool:
    """The claim agrees with the graph the run was planned from: same owner, no cancel, and
    every node in the state the message said (a node with no state field is pending)."""
    if not claim.ok or claim.cancel_requested:
        return False
    states = claim.node_states or {}
    for node in run.graph.nodes:
        state = states.get(node.id)
        if state is None:
            if node.status != NodeStatus.pending:
                return False
        elif state.get("status") != node.status or state.get("attempts", 0) != node.attempts:
            return False
    return True


def _peek_job_id(raw: bytes) -> str | None:
    try:
        value = orjson.loads(raw).get("job_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _reason(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        return f"invalid handoff message: {exc.error_count()} errors, first at {loc or '<root>'}: {first['msg']}"
    return str(exc)


def _merge_states(graph: Graph, states: dict[str, dict[str, Any]]) -> Graph:
    """Overlay the job hash's node states (the truth) on the graph the message carried,
    so a re-delivered message never runs a node that already completed."""
    for index, node in enumerate(graph.nodes):
        state = states.get(node.id)
        if state and (state.get("status") != node.status or state.get("attempts", 0) != node.attempts):
            graph.nodes[index] = Node.model_validate({**node.model_dump(exclude=RUNTIME_FIELDS), **state})
    return graph


def _cancel_rest(run: JobRun, events: list[Any], fields: list[Any], plane: str) -> None:
    for node in run.graph.nodes:
        if not is_terminal(node):
            node.status = NodeStatus.cancelled
            node.reason = "job cancelled"
            node.finished_at = time.time()
            events.append(event_body("status", run.job_id, node_id=node.id, status="cancelled",
                                     message=node.reason, plane=plane))
            fields += [node_field(node.id), node_state(node)]


def _queue_ready(run: JobRun, target: str | None, events: list[Any], fields: list[Any], plane: str) -> None:
    by_id = {n.id: n for n in run.graph.nodes}
    for node in run.graph.nodes:
        if node.status == NodeStatus.pending and lane_of(node) == target and all(
            is_terminal(by_id[n]) for n in node.needs
        ):
            node.status = NodeStatus.queued
            events.append(event_body("status", run.job_id, node_id=node.id, status="queued", plane=plane))
            fields += [node_field(node.id), node_state(node)]


async def _close_quietly(pubsub: Any) -> None:
    """Close a subscription whose connection may already be gone."""
    if pubsub is not None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
