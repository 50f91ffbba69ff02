"""Small helpers shared by tests (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from dualplane.common.models import Job, Node
from dualplane.common.registry import TaskRegistry
from dualplane.common.settings import Settings
from dualplane.common.statuses import FINISHED
from dualplane.control_plane import ControlPlane
from dualplane.data_plane import Worker


def unique_name(prefix: str = "t") -> str:
    """S3-valid unique bucket/id name (lowercase, digits, hyphens)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def descendants(pid: int) -> set[int]:
    """All live descendant pids of `pid`, read from /proc (Linux), to prove stop() leaks nothing."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class RunningWorker:
    """An in-process worker running as an asyncio task (no HTTP server)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(serve_http=False, stop=self._stop))
        await asyncio.wait_for(self.worker.consumer.started.wait(), 10)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=30)
            if not done:  # name what it waits on, so a hang that CI meets once can be found
                stacks = {task.get_name(): _await_chain(task.get_coro())
                          for task in asyncio.all_tasks() if not task.done() and task is not asyncio.current_task()}
                self._task.cancel()
                raise AssertionError(f"worker {self.worker.worker_id} did not stop within 30 s; tasks: {stacks}")
            self._task.result()
            self._task = None


def _await_chain(coro: Any) -> list[str]:
    """Where a suspended coroutine waits: each frame down its chain of awaits, then what it awaits."""
    chain = []
    while getattr(coro, "cr_frame", None) is not None:
        chain.append(f"{coro.cr_code.co_filename}:{coro.cr_frame.f_lineno} {coro.cr_code.co_name}")
        coro = coro.cr_await
    return [*chain, repr(coro)[:200]] if coro is not None else chain


TERMINAL_JOB = tuple(sorted(FINISHED))


async def wait_for_job(plane: ControlPlane, job_id: str, *, timeout_s: float = 20.0,
                       statuses: tuple[str, ...] = TERMINAL_JOB) -> Job:
    """Poll until the job reaches one of ``statuses``; fail the test with its state if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = await plane.get_job(job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout_s}s: {job.model_dump_json()}")
        await asyncio.sleep(0.02)


async def wait_for_dead_letters(plane: ControlPlane, count: int, *, timeout_s: float = 15.0) -> list[dict[str, str]]:
    """The dead letters once there are at least ``count``; fail the test with what there is if not."""
    deadline = time.monotonic() + timeout_s
    while len(dead := await plane.bridge.dead_letters()) < count:
        assert time.monotonic() < deadline, f"only {len(dead)} dead letters: {dead}"
        await asyncio.sleep(0.05)
    return dead


async def wait_for_node(plane: ControlPlane, job_id: str, node_id: str, status: str, *,
                        timeout_s: float = 20.0) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await plane.get_job(job_id)
        node = next(n for n in job.graph.nodes if n.id == node_id)
        if node.status == status:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"node {node_id} still {node.status} after {timeout_s}s")
        await asyncio.sleep(0.02)


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of a sawtooth-like tone: audio an upload check and a player accept."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"".join((i * 997 % 20000 - 10000).to_bytes(2, "little", signed=True)
                                 for i in range(int(seconds * rate))))
    return buf.getvalue()


def node(job: Job, node_id: str) -> Node:
    return next(n for n in job.graph.nodes if n.id == node_id)


def local_model_registry(root: Path, name: str = "tiny-local") -> Path:
    """A ``models.toml`` naming one small local model directory ``name`` (for settings'
    ``models_config``); returns its path."""
    weights = root / "weights"
    weights.mkdir()
    (weights / "w.bin").write_bytes(b"\1" * 2048)
    models_toml = root / "models.toml"
    models_toml.write_text(f'[models.{name}]\nkind = "test"\nsource = "local:{weights}"\n')
    return models_toml


@asynccontextmanager
async def planes_with(settings: Settings, registry: TaskRegistry, **worker_settings: Any
                      ) -> AsyncIterator[ControlPlane]:
    """A control plane and an in-process worker that both know ``registry`` (a catalog with test
    tasks added); the worker's settings get ``worker_settings`` on top."""
    from prometheus_client import CollectorRegistry

    plane = ControlPlane(settings, registry=registry, metrics_registry=CollectorRegistry())
    await plane.start()
    worker = RunningWorker(Worker(settings.model_copy(update={"worker_id": unique_name("w"), **worker_settings}),
                                  registry=registry))
    try:
        await worker.start()
        yield plane
    finally:
        await worker.stop()
        await plane.stop(grace_s=0.5)


def spawn_worker(settings: Settings, worker_id: str, *, module: str = "dualplane",
                 extra: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A worker in its own process (``python -m <module> worker``, or ``python -m tests.probe``
    followed by ``args``), on the test's Redis, S3 and lease, so it can be killed, paused and
    resumed for real."""
    env = dict(os.environ, REDIS_URL=settings.redis_url or "", S3_ENDPOINT=settings.s3_endpoint or "",
               S3_ACCESS_KEY=settings.s3_access_key or "", S3_SECRET_KEY=settings.s3_secret_key or "",
               S3_BUCKET=settings.s3_bucket, DUALPLANE_LEASE_S=str(settings.lease_s),
               DUALPLANE_KEY_PREFIX=settings.key_prefix, DUALPLANE_REDIS_PARTITIONS=str(settings.redis_partitions),
               DUALPLANE_REDIS_CLUSTER="1" if settings.redis_cluster else "0", DUALPLANE_WORKER_ID=worker_id,
               DUALPLANE_READ_BLOCK_MS="100", DUALPLANE_WORKER_PORT="0", PROBE_REDIS_URL=settings.redis_url or "")
    env.update(extra or {})
    argv = [sys.executable, "-m", module, *(["worker"] if module == "dualplane" else []), *args]
    return subprocess.Popen(argv, env=env, cwd=Path(__file__).resolve().parent.parent)


async def kill_pubsub_clients(client: Any) -> int:
    """Drop every Pub/Sub connection (CLIENT KILL TYPE pubsub) of the Redis, or of every node of a
    cluster (a subscriber is connected to whichever node it picked); how many were dropped."""
    if isinstance(client, aioredis.RedisCluster):
        killed = await client.client_kill_filter(_type="pubsub", target_nodes=aioredis.RedisCluster.ALL_NODES)
        return sum(int(n) for n in killed.values()) if isinstance(killed, dict) else int(killed)
    return int(await client.client_kill_filter(_type="pubsub"))
