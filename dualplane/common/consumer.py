"""The loop both planes run: read handoffs from a lane's stream, run the lane's nodes,
hand the graph on (or finish the job) and acknowledge — in one atomic step.

``run`` → ``_poll`` → ``_start`` → ``_run_batch`` (the executor yields each run whose plan is
done) → ``_finish``, the arq way: the consumer finishes its runs itself. ``_poll`` also reclaims
abandoned messages, before new ones, when a reclaim is due; the cancel watch
(:class:`~dualplane.common.cancel_watch.CancelWatch`) and the lease heartbeat run beside it.

Whatever goes wrong with one message — it does not parse, its graph cannot be run, a bug
meets it — that message is dead-lettered with the reason and the loop goes on. Should the
loop itself die, :attr:`Consumer.failure` says why, the leases it held are let go (so other
consumers reclaim them) and the plane reports itself unhealthy and exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import orjson
import pydantic

from dualplane.common import logs
from dualplane.common.bridge import Bridge, Claim, LeaseKeeper, Message, parse_claim
from dualplane.common.cancel_watch import DEFAULT_CANCEL_POLL_S, CancelWatch
from dualplane.common.errors import BridgeError
from dualplane.common.executor import Executor, JobRun
from dualplane.common.graph import plan_for_lane, structure_problem
from dualplane.common.hooks import HookChain, Hooks
from dualplane.common.job_state import RUNTIME_FIELDS
from dualplane.common.models import Graph, Handoff, Node

log = logging.getLogger("dualplane.consumer")

#: A consumer whose reads have failed for longer than this is reported unhealthy.
UNHEALTHY_AFTER_S = 10.0
#: Longest reason kept with a dead letter (an exception text can be huge).
MAX_REASON_CHARS = 500


class Consumer:
    """Consumes one lane (``control`` or ``python:<pool>``).

    :param bridge: connected Redis bridge.
    :param executor: runs the nodes of this lane's plane.
    :param lane: which stream to read.
    :param name: consumer name in the group (unique per process).
    :param concurrency: most jobs held at once (messages read but not yet handed on).
    :param hooks: this plane's hooks (its metrics): reclaims, dead letters, hand-ons.
    :param cancel_poll_s: how often the held jobs' cancel flags are read (pushes are the fast path).
    """

    def __init__(
        self,
        bridge: Bridge,
        executor: Executor,
        *,
        lane: str,
        name: str,
        concurrency: int,
        hooks: Sequence[Hooks] = (),
        cancel_poll_s: float = DEFAULT_CANCEL_POLL_S,
    ) -> None:
        self.bridge = bridge
        self.executor = executor
        self.lane = lane
        self.name = name
        #: The lane's streams, one per partition: read together, reclaimed one by one.
        self.streams = bridge.keys.lane_streams(lane)
        self._reader = bridge.lane_reader(self.streams, name)
        self.plane = "control" if lane == "control" else "python"
        self._concurrency = concurrency
        self._hooks = HookChain(hooks)
        self._inflight: dict[str, JobRun] = {}  # message id -> run
        self._cancels = CancelWatch(bridge, self._inflight.values, name=name, poll_s=cancel_poll_s)
        self._batches: set[asyncio.Task[None]] = set()
        self._finishers: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lease = LeaseKeeper(bridge.config.redis_url, bridge.keys, name, bridge.heartbeat_s,
                                  on_lost=self._lost_from_thread, cluster=bridge.config.cluster)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        #: A lease renewed more recently than this is surely still ours: a reclaim needs a
        #: whole lease of silence after the renewal reached Redis (renewals go every lease / 3).
        self._lease_fresh_s = 0.8 * bridge.config.lease_s
        #: Abandoned messages are looked for this often; the next free slot goes to them first.
        self._reclaim_every_s = max(0.05, bridge.config.lease_s / 2)
        self._next_reclaim = 0.0
        self._last_read_ok = time.monotonic()
        self._read_error: str | None = None
        #: Why the loop died (None while it runs or after a clean stop).
        self.failure: BaseException | None = None
        self.started = asyncio.Event()

    @property
    def busy(self) -> int:
        return len(self._inflight)

    # -- main loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`; if the loop dies, :attr:`failure` says why."""
        logs.bind(plane=self.plane, worker=self.name)  # inherited by every task started below
        self._loop = asyncio.get_running_loop()
        await self._ensure_group()
        self._lease.start()
        self._side_tasks = [asyncio.create_task(self._cancels.run(self._stopping))]
        self.started.set()
        try:
            while not self._stopping.is_set():
                await self._poll()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # nothing reads here any more: let the leases lapse so other consumers reclaim
            # the messages, and say so loudly (health turns red, the process exits non-zero)
            self.failure = exc
            log.critical("%s: the consume loop of %s died; %d messages left for reclaim", self.name,
                         self.lane, len(self._inflight), exc_info=exc)
            self._lease.stop()
            raise
        finally:
            self._stopping.set()  # the side loops end on it even if a cancellation is swallowed
            for task in self._side_tasks:
                task.cancel()
            await asyncio.gather(*self._side_tasks, return_exceptions=True)

    async def _ensure_group(self) -> None:
        """Create the group, waiting out a Redis that is not there yet."""
        while True:
            try:
                for stream in self.streams:
                    await self.bridge.ensure_group(stream)
                return
            except BridgeError as exc:
                self._read_failed(f"cannot create the consumer group: {exc}")
                if not await self._every(1.0):
                    return

    def health(self) -> dict[str, Any]:
        """Whether this consumer is doing its job, for the plane's ``/health``."""
        if self.failure is not None:
            return {"ok": False, "error": f"consume loop died: {type(self.failure).__name__}: {self.failure}"}
        stalled_s = time.monotonic() - self._last_read_ok
        if self._read_error is not None and stalled_s > UNHEALTHY_AFTER_S:
            return {"ok": False, "error": f"no successful read for {stalled_s:.0f} s: {self._read_error}"}
        return {"ok": True, "busy": len(self._inflight)}

    def _read_failed(self, error: str) -> None:
        self._read_error = error
        log.error("%s: %s; retrying in 1 s", self.name, error)

    async def _poll(self) -> None:
        free = self._concurrency - len(self._inflight)
        if free <= 0:
            self._slot_freed.clear()
            await self._wait_or_stop(self._slot_freed.wait(), timeout_s=None)
            return
        try:
            if time.monotonic() >= self._next_reclaim:
                # reclaimed work goes first: under a stream of new work a dead consumer's
                # messages would otherwise wait for a moment when no new message is there
                self._next_reclaim = time.monotonic() + self._reclaim_every_s
                if await self._reclaim(free):
                    return
            messages = await self._reader.read(
                count=min(free, self.bridge.config.read_batch),
                block_ms=self.bridge.config.read_block_ms,
            )
        except BridgeError as exc:
            self._read_failed(str(exc))
            await self._wait_or_stop(asyncio.sleep(1.0), timeout_s=1.0)
            return
        self._last_read_ok = time.monotonic()
        self._read_error = None
        if messages and not self._stopping.is_set():
            await self._start(messages, {})
        elif messages:
            await self._release(messages)

    async def _release(self, messages: Iterable[Message | None]) -> None:
        """Give messages back (see :meth:`Bridge.release`), stream by stream."""
        by_stream: dict[str, list[str]] = {}
        for message in messages:
            if message is not None:
                by_stream.setdefault(message.stream, []).append(message.id)
        for stream, ids in by_stream.items():
            await self.bridge.release(stream, self.name, ids)

    async def _reclaim(self, count: int) -> bool:
        """Take over up to ``count`` abandoned messages (idle past the lease) from the lane's
        streams; True if any."""
        messages: list[Message] = []
        counts: dict[str, int] = {}
        for stream in self.streams:
            found, found_counts = await self.bridge.reclaim(stream, self.name, count=count - len(messages))
            messages += found
            counts.update(found_counts)
            if len(messages) >= count:
                break
        if not messages:
            return False
        self._hooks.emit("after_reclaim", len(messages))
        log.warning("%s: reclaimed %d abandoned messages", self.name, len(messages))
        await self._start(messages, counts)
        return True

    async def _wait_or_stop(self, awaitable: Awaitable[Any], *, timeout_s: float | None) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        work = asyncio.ensure_future(awaitable)
        await asyncio.wait({stop, work}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, work):
            task.cancel()

    # -- starting work ---------------------------------------------------------------

    async def _start(self, messages: list[Message], delivery_counts: dict[str, int]) -> None:
        """Parse and fence-check a batch of messages (one pipeline of claims), then run their
        plans together. Each message is handled on its own: one that breaks anything is
        dead-lettered."""
        valid: list[tuple[Message, Handoff]] = []
        for message in messages:
            handoff = self._parse(message, delivery_counts.get(message.id, 1))
            if handoff is not None:
                valid.append((message, handoff))
                self._lease.hold(message.stream, message.id)
        replies = await asyncio.gather(*(self.bridge.claim_nowait(h.job_id, h.handoff_seq) for _, h in valid),
                                       return_exceptions=True)
        runs: list[JobRun] = []
        for (message, handoff), reply in zip(valid, replies, strict=True):
            if isinstance(reply, BaseException):  # Redis went away: the lease lapses, it is reclaimed
                log.error("%s: claim of job %s failed: %s", self.name, handoff.job_id, reply)
                self._lease.drop(message.stream, message.id)
                continue
            try:
                run = await self._accept(message, handoff, parse_claim(reply))
            except Exception as exc:
                self._reject(message, handoff.job_id, exc)
                continue
            if run is not None and run.plan:
                runs.append(run)
        self._launch(runs)

    def _reject(self, message: Message, job_id: str | None, exc: Exception) -> None:
        """Dead-letter a message whose handling raised: a message this plane cannot handle
        must not take the loop down, nor come back for ever."""
        log.error("%s: cannot handle message %s (job %s)", self.name, message.id, job_id, exc_info=exc)
        self._inflight.pop(message.id, None)
        self._poison(message, job_id, f"cannot be processed: {type(exc).__name__}: {exc}")

    def _poison(self, message: Message, job_id: str | None, reason: str) -> None:
        self._lease.drop(message.stream, message.id)
        self._hooks.emit("after_dead_letter", self.lane)
        self._spawn(self.bridge.dead_letter(message, reason[:MAX_REASON_CHARS], job_id))

    def _launch(self, runs: list[JobRun]) -> None:
        if runs:
            task = asyncio.create_task(self._run_batch(runs))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

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
            handoff = Handoff.model_validate_json(message.raw)
            if self.bridge.keys.stream_partition(message.stream) != self.bridge.keys.partition(handoff.job_id):
                # its job's keys are in another slot: no script could touch both
                raise ValueError(f"job {handoff.job_id} does not belong on {message.stream} (another partition's)")
            problem = structure_problem(handoff.graph)
            if problem is not None:
                raise ValueError(f"invalid handoff message: its graph cannot run: {problem}")
            return handoff
        except Exception as exc:  # anything at all: the message goes, the loop stays
            reason = _reason(exc)
            job_id = _peek_job_id(message.raw) if message.raw else None
            log.error("%s: dead-lettering %s (job %s): %s", self.name, message.id, job_id, reason)
            self._poison(message, job_id, reason)
            return None

    async def _accept(self, message: Message, handoff: Handoff, claim: Claim) -> JobRun | None:
        if not claim.ok:
            self._lease.drop(message.stream, message.id)
            if claim.gone:
                await self.bridge.dead_letter(message, "job no longer exists (expired or purged)", handoff.job_id)
            else:
                self._hooks.emit("after_stale_handoff")
                log.warning("%s: rejected stale handoff %s of job %s", self.name, handoff.handoff_seq, handoff.job_id)
                await self.bridge.ack(message.stream, [message.id])
            return None
        graph = _merge_states(handoff.graph, claim.node_states or {})
        plan = [n.id for n in plan_for_lane(graph, self.lane)] if not claim.cancel_requested else []
        run = JobRun(
            job_id=handoff.job_id, graph=graph, plan=plan, handoff_seq=handoff.handoff_seq, plane=self.plane,
            fence=claim.fence, user=claim.user, message=message, request_id=handoff.request_id,
            created_at=claim.created_at,
        )
        run.state.status = claim.status
        if claim.cancel_requested or self._cancels.recently_cancelled(run.job_id):
            run.cancel.set()
        run.owned = self._still_owned
        self._inflight[message.id] = run
        if not plan:  # nothing to run here (cancelled, or all skipped): hand on at once
            self._finish(run)
        return run

    async def _run_batch(self, runs: list[JobRun]) -> None:
        try:
            async for run in self.executor.run(runs):
                self._finish(run)  # no await before it: the handoff joins the last node's pipeline
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in the executor must not strand the messages
            log.exception("%s: executor failed; releasing %d jobs for another attempt", self.name, len(runs))
            stranded = [r for r in runs if not r.done]
            for run in stranded:
                self._forget(run)
            await self._release(r.message for r in stranded)

    # -- finishing -------------------------------------------------------------------

    def _finish(self, run: JobRun) -> None:
        """Hand the graph to the next lane, or finish the job; ack the message atomically.

        Synchronous on purpose: called in the tick the executor yields the run, right after
        its last node's end was mirrored, the handoff is merged into that same script call.
        """
        try:
            self._hand_on(run)
        except Exception as exc:  # a bug here must not strand the message with a live lease
            log.exception("%s: cannot hand on job %s", self.name, run.job_id)
            self._forget(run)
            if run.message is not None:
                self._poison(run.message, run.job_id, f"cannot be handed on: {type(exc).__name__}: {exc}")

    def _hand_on(self, run: JobRun) -> None:
        if run.unmirrored:  # the hash may not say what ran here: let the message be reclaimed
            log.error("%s: job %s: some of its state did not reach Redis; leaving it to be reclaimed",
                      self.name, run.job_id)
            self._forget(run)
            return
        if run.stale:  # another owner has it, or will (its message is delivered again): hands off
            self._forget(run)
            return
        decided = run.state.hand_on(cancel=run.cancel.is_set())
        outcome, target = decided.outcome, decided.target
        reply = self.bridge.handoff_nowait(
            run.job_id, expected_seq=run.handoff_seq, fence=run.fence, source=run.message, target_lane=target,
            graph=run.graph, request_id=run.request_id, sent_by=self.name, change=decided.mutation,
        )
        reply.add_done_callback(lambda f: self._handed_off(run, f, outcome, target))

    def _handed_off(self, run: JobRun, reply: asyncio.Future[Any], outcome: str | None, target: str | None) -> None:
        if reply.cancelled():
            return
        with logs.bound(job_id=run.job_id, request_id=run.request_id):
            if reply.exception() is not None:  # the message stays pending and is reclaimed after the lease
                log.error("handoff of job %s failed: %s", run.job_id, reply.exception())
            elif (seq := int(reply.result())) < 0:
                self._count_finish(run, outcome, target, seq)
                log.warning("job %s: handoff rejected (%s)", run.job_id,
                            "another owner holds it now" if seq == -1 else "the job is gone")
            else:
                self._count_finish(run, outcome, target, seq)
                if log.isEnabledFor(logging.INFO):
                    log.info("job %s %s", run.job_id, f"finished {outcome}" if outcome else f"handed to {target}")
        self._forget(run)

    def _count_finish(self, run: JobRun, outcome: str | None, target: str | None, seq: int) -> None:
        if seq == -1:
            self._hooks.emit("after_stale_handoff")
        elif outcome:
            self._hooks.emit("after_job_finished", run.graph, outcome, run.created_at)
        else:
            self._hooks.emit("after_handoff", target or "")

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

    async def _still_owned(self, run: JobRun) -> bool:
        """Whether this consumer still owns the run's message, checked before each node starts.

        Nobody can reclaim an entry less than a lease after its last renewal, so a recent one
        answers at once. An older one means this process was paused (SIGSTOP, a GC pause, a
        frozen VM) or Redis was away: the lease is renewed now, and a node whose job another
        consumer took over meanwhile (and may have finished) is not started."""
        message = run.message
        if message is None or self._lease.fresh(message.stream, message.id, self._lease_fresh_s):
            return True
        try:
            owned = await asyncio.to_thread(self._lease.renew_now, message.stream, message.id)
        except BridgeError as exc:
            log.warning("%s: cannot confirm the lease of job %s (%s); not starting its node", self.name,
                        run.job_id, exc)
            return False
        if not owned:
            self._lost([message.id])
        return owned

    def _lost_from_thread(self, stream: str, ids: list[str]) -> None:
        """The lease keeper found messages this consumer no longer owns (its thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._lost, ids)

    def _lost(self, ids: list[str]) -> None:
        """These messages are no longer this consumer's: another consumer reclaimed them while this
        one was paused (it owns the jobs now: their fence moved on), or a cluster failover lost
        their delivery (the new primary delivers them again). Stop, writing nothing."""
        for message_id in ids:
            run = self._inflight.get(message_id)
            if run is None or run.done:
                continue
            log.warning("%s: job %s was reclaimed by another consumer; stopping its nodes here",
                        self.name, run.job_id)
            run.stale = True
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
            await self._release(r.message for r in leftover)
            for run in leftover:
                self._forget(run)
        await asyncio.gather(*self._finishers, return_exceptions=True)
        # reads still in flight (a cluster's, one per partition) must not outlive the consumer;
        # what they and the backlog brought goes back at once
        await self._release(await self._reader.close())
        self._lease.stop()
        self.executor.close()


class _TooManyDeliveries(ValueError):
    """The delivery limit was exceeded."""


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
    if isinstance(exc, ValueError):
        return str(exc)
    return f"cannot be processed: {type(exc).__name__}: {exc}"


def _merge_states(graph: Graph, states: dict[str, dict[str, Any]]) -> Graph:
    """Overlay the job hash's node states (the truth) on the graph the message carried,
    so a re-delivered message never runs a node that already completed."""
    for index, node in enumerate(graph.nodes):
        state = states.get(node.id)
        if state and (state.get("status") != node.status or state.get("attempts", 0) != node.attempts):
            graph.nodes[index] = Node.model_validate({**node.model_dump(exclude=set(RUNTIME_FIELDS)), **state})
    return graph
