"""What a task sees while it runs: its ids, progress, cancellation and the artifact store."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from dualplane.common.errors import DataEventTooLarge, TaskCancelled
from dualplane.common.inputs import fetch_inputs

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore
    from dualplane.common.url_policy import UrlPolicy

#: Progress closer than this to the last reported value is not worth an event.
PROGRESS_STEP = 0.01
#: At most this often, whatever the step: each event costs a Python-bound task loop 2–5 ms
#: (the event loop that mirrors it competes for the GIL; measured with bench/gpu_tasks.py on
#: 2 cores), and four updates a second still look live.
PROGRESS_INTERVAL_S = 0.25

#: Largest ``data`` of one data event, as JSON: every event is stored with the job and sent to
#: every watcher, so a preview must stay small (bulk output belongs in an artifact).
MAX_DATA_EVENT_BYTES = 64 * 1024

#: How often a task blocked on a fetch looks at its cancel flag.
CANCEL_CHECK_S = 0.1

T = TypeVar("T")

Write = Callable[[dict[str, Any]], None]


class ModelProvider(Protocol):
    """The models a worker offers its tasks (``ctx.models``: the data plane's ``ModelManager``)."""

    def load(self, name: str, loader: Callable[..., Any], *, key: str | None = None,
             extra: Sequence[str] = ()) -> Any:
        """The warm copy of model ``name``, loaded with ``loader(path, device, dtype)`` if need be (blocking)."""

    def entry(self, name: str) -> Any:
        """The registry entry of model ``name`` (its source, kind and limits)."""

    def free_memory(self) -> int:
        """Drop every warm model and cached device memory (after an out-of-memory error); how many."""


class TaskContext:
    """Handed to every task as its first argument.

    :param job_id: the job the node belongs to.
    :param node_id: the node being run.
    :param attempt: 1 for the first attempt.
    :param write: sends a chunk to the executor (LangGraph's stream writer, made
        thread-safe for sync tasks); the executor mirrors it into Redis.
    :param cancelled: set when the job is cancelled or the worker is releasing it.
    :param artifacts: the artifact store, or None on a plane without one.
    :param describe_worker: returns this worker's capability manifest (data plane).
    :param models: the worker's model manager (weights from the model store, kept warm),
        or None on a plane without one.
    :param url_policy: where URL inputs may be fetched from (None: public addresses only).
    :param may_read: raises ObjectNotFound for an object key the job's user may not read.
    :param owned: whether this plane still owns the job (asked before every artifact write).
    """

    def __init__(
        self,
        *,
        job_id: str,
        node_id: str,
        attempt: int,
        write: Write,
        cancelled: threading.Event,
        artifacts: ArtifactStore | None,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        models: ModelProvider | None = None,
        describe_worker: Callable[[], dict[str, Any]] | None = None,
        url_policy: UrlPolicy | None = None,
        may_read: Callable[[str], Awaitable[None]] | None = None,
        owned: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.node_id = node_id
        self.attempt = attempt
        self.log = logger
        self._write = write
        self._cancelled = cancelled
        self._store = artifacts
        #: Raises ObjectNotFound for a key this job's user may not read (common/access.py).
        self._check_read = may_read
        #: Whether this plane still owns the job (None: always): checked before an artifact write.
        self._owned = owned
        self._loop = loop
        self._url_policy = url_policy
        self.models = models
        #: The worker's capability manifest (tasks, device, VRAM, warm models), where there is one.
        self.describe_worker = describe_worker
        self._last_progress = -1.0
        self._last_progress_at = float("-inf")

    # -- progress and data ------------------------------------------------------------

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1]: at most every 1 % and every 0.25 s; 1.0 and progress with a
        message always go out."""
        fraction = min(1.0, max(0.0, float(fraction)))
        if fraction < 1.0 and message is None:
            now = time.monotonic()
            if fraction - self._last_progress < PROGRESS_STEP or now - self._last_progress_at < PROGRESS_INTERVAL_S:
                return
            self._last_progress_at = now
        self._last_progress = fraction
        self._write({"kind": "progress", "progress": round(fraction, 4), "message": message})

    def on_step(self, step: int, total: int, state: Any = None) -> None:
        """The step callback torch loops take: progress plus a cancellation check."""
        self.check_cancelled()
        self.progress(step / total if total else 1.0)

    def emit_data(self, data: dict[str, Any], message: str | None = None) -> None:
        """Publish task-defined data (a preview, a log line) on the job's data channel; raises
        :class:`DataEventTooLarge` when its JSON is over :data:`MAX_DATA_EVENT_BYTES`."""
        size = len(orjson.dumps(data))
        if size > MAX_DATA_EVENT_BYTES:
            raise DataEventTooLarge(size, MAX_DATA_EVENT_BYTES)
        self._write({"kind": "data", "data": data, "message": message})

    # -- cancellation -----------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the job was cancelled; call it inside loops."""
        if self._cancelled.is_set():
            raise TaskCancelled(f"job {self.job_id} cancelled")

    @contextmanager
    def holding(self, lock: threading.Lock | threading.RLock) -> Iterator[None]:
        """``with ctx.holding(lock):`` the block runs holding ``lock`` (a warm pipeline other
        jobs share, the global RNG); the wait for it raises :class:`TaskCancelled` if the job
        is cancelled meanwhile."""
        while not lock.acquire(timeout=CANCEL_CHECK_S):
            self.check_cancelled()
        try:
            yield
        finally:
            lock.release()

    # -- artifacts --------------------------------------------------------------------

    async def aput_artifact(self, name: str, data: bytes, content_type: str, *, record: bool = True) -> dict[str, Any]:
        """Store bytes under the node's deterministic key and record the reference.

        ``record=False`` stores without listing the object among the node's artifacts (no
        event either): state the task keeps for itself, such as a training checkpoint. It
        lives under the job's prefix all the same, so purging the job deletes it."""
        if self._store is None:
            raise RuntimeError("this plane has no artifact store configured")
        if self._owned is not None and not await self._owned():
            # a plane that was paused past its lease must not overwrite what the job's new
            # owner wrote under the same deterministic key
            raise TaskCancelled(f"job {self.job_id} was taken over elsewhere")
        ref = await self._unless_cancelled(self._store.put(self.job_id, self.node_id, name, data, content_type))
        if record:
            self._write({"kind": "artifact", "artifact": ref})
        return ref

    async def aget_artifact(self, key: str) -> bytes:
        """Bytes of an object the job's user may read (an upstream node's artifact, one of
        their uploads, a model file); any other key fails like a missing one."""
        if self._store is None:
            raise RuntimeError("this plane has no artifact store configured")
        if self._check_read is not None:
            await self._check_read(key)
        return await self._unless_cancelled(self._store.get(key))

    async def _unless_cancelled(self, call: Awaitable[T]) -> T:
        """Await a store call, giving up (TaskCancelled) if the job is cancelled meanwhile: the
        call runs in a thread a frozen store can hold up to its read timeout."""
        task = asyncio.ensure_future(call)
        while True:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_CHECK_S)
            if done:
                return task.result()
            if self._cancelled.is_set():
                task.cancel()
                self.check_cancelled()

    def fetch_inputs(self, refs: Sequence[str], *, max_bytes: int, what: str = "input") -> list[bytes]:
        """Blocking, for sync tasks: the bytes of object-store keys and http(s) URLs, fetched
        concurrently (:func:`dualplane.common.inputs.fetch_inputs`); raises
        :class:`TaskCancelled` if the job is cancelled meanwhile."""
        return self._wait(asyncio.run_coroutine_threadsafe(
            fetch_inputs(refs, self.aget_artifact, max_bytes=max_bytes, what=what, policy=self._url_policy),
            self._loop))

    def get_artifact(self, key: str) -> bytes:
        """Blocking version of :meth:`aget_artifact` for sync tasks; raises :class:`TaskCancelled`
        if the job is cancelled meanwhile (a frozen store would otherwise hold the node until the
        store's read timeout)."""
        return self._wait(self.get_artifact_nowait(key))

    def get_artifact_nowait(self, key: str) -> Future[bytes]:
        """Start reading an object and return at once, for sync tasks: the round trip overlaps
        the work done before the bytes are needed."""
        return asyncio.run_coroutine_threadsafe(self.aget_artifact(key), self._loop)

    def put_artifact(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Blocking version of :meth:`aput_artifact` for sync tasks (they run in a thread);
        raises :class:`TaskCancelled` if the job is cancelled meanwhile."""
        return self._wait(self.put_artifact_nowait(name, data, content_type))

    def put_artifact_nowait(self, name: str, data: bytes, content_type: str, *,
                            record: bool = True) -> Future[dict[str, Any]]:
        """Start storing bytes and return at once, for sync tasks: a write the task need not
        wait for (a training checkpoint) overlaps the work that follows."""
        return asyncio.run_coroutine_threadsafe(self.aput_artifact(name, data, content_type, record=record),
                                                self._loop)

    def wait_settled(self, future: Future[Any]) -> BaseException | None:
        """Wait for a ``*_nowait`` future like :meth:`wait`, but return its error instead of
        raising it: testing for an expected error (no checkpoint yet) this way ties no
        traceback to the caller's frame (and whatever it holds, a model) in a reference cycle."""
        while True:
            try:
                return future.exception(timeout=CANCEL_CHECK_S)
            except TimeoutError:
                if self._cancelled.is_set():
                    future.cancel()
                    self.check_cancelled()

    def wait(self, future: Future[T]) -> T:
        """The result of a ``*_nowait`` future, for sync tasks; raises :class:`TaskCancelled` if
        the job is cancelled meanwhile."""
        return self._wait(future)

    def _wait(self, future: Future[T]) -> T:
        """The future's result, waited for in slices so that a cancelled job stops waiting."""
        while True:
            try:
                return future.result(timeout=CANCEL_CHECK_S)
            except TimeoutError:
                if future.done():  # the coroutine's own TimeoutError, not our slice running out
                    raise
                if self._cancelled.is_set():
                    future.cancel()
                    self.check_cancelled()
