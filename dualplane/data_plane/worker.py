"""A data-plane worker: consumes ``stream:data:<pool>``, runs python-plane nodes, hands back.

It also serves ``/health`` and ``/metrics`` on its own port, publishes its capability
manifest under ``worker:<id>`` with a TTL, and on SIGTERM stops reading, lets running
nodes finish for a grace period and releases the rest for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dualplane.common.artifacts import store_from_settings
from dualplane.common.bridge import Bridge
from dualplane.common.consumer import Consumer
from dualplane.common.errors import PlaneFailed
from dualplane.common.executor import Executor
from dualplane.common.hooks import Hooks, NodeRefused
from dualplane.common.models import CapabilityManifest, Node, WorkerModel
from dualplane.common.registry import TaskRegistry, TaskSpec
from dualplane.common.routing import satisfies
from dualplane.common.settings import Settings
from dualplane.common.telemetry import PlaneMetrics
from dualplane.common.url_policy import UrlPolicy
from dualplane.common.version import __version__
from dualplane.data_plane.metrics import GpuCollector, ModelMetrics
from dualplane.ml.model_store import manager_from_settings
from dualplane.tasks import default_registry

log = logging.getLogger("dualplane.worker")

#: The manifest outlives a few missed heartbeats, no more.
MANIFEST_TTL_S = 15.0
#: Longest a heartbeat waits for its models' weights (manifests read from the store, cached):
#: past it the manifest goes out with the last known values and the reading goes on, so a slow
#: store cannot let the manifest expire.
MODELS_REFRESH_WAIT_S = 2.0


class Worker:
    """One worker process.

    :param settings: pool, concurrency, Redis and S3 settings, HTTP port.
    :param registry: task catalog; the default one when None.
    """

    def __init__(self, settings: Settings, *, registry: TaskRegistry | None = None) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.registry = registry or default_registry()
        self.bridge = Bridge(settings.bridge_config())
        self.artifacts = store_from_settings(settings.store)
        self.metrics = PlaneMetrics(CollectorRegistry(), "python")
        self.models = manager_from_settings(settings.models, self.artifacts)
        self.model_metrics = ModelMetrics(self.metrics.registry)
        self.model_metrics.attach(self.models)
        self.metrics.registry.register(GpuCollector())
        self.metrics.concurrency.set(settings.concurrency)
        self.executor = Executor(
            self.registry, "python", bridge=self.bridge, concurrency=settings.concurrency,
            artifacts=self.artifacts, hooks=[self.metrics, _DeviceHooks(self)], worker_id=self.worker_id,
            models=self.models, describe_worker=lambda: self.manifest().model_dump(mode="json"),
            url_policy=UrlPolicy.from_settings(settings.url_fetch),
        )
        self.consumer = Consumer(
            self.bridge, self.executor, lane=f"python:{settings.pool}", name=self.worker_id,
            concurrency=settings.concurrency, hooks=[self.metrics], cancel_poll_s=settings.cancel_poll_s,
        )
        self.started_at = time.time()
        self._device: dict[str, Any] | None = None
        self._torch_threads: int | None = None
        self._torch_watch = threading.Lock()
        self._torch_watched = False
        # every registry model, "unknown" until the store says (no I/O here: manifest() is sync)
        self._models: list[WorkerModel] = [
            WorkerModel(name=name, kind=self.models.entry(name).kind, weights="unknown")
            for name in self.models.store.registry.names()] if self.models is not None else []
        self._models_read: asyncio.Future[None] | None = None

    def manifest(self) -> CapabilityManifest:
        device = self._device_facts()
        loaded = sorted({w["name"] for w in self.models.warm()}) if self.models is not None else []
        return CapabilityManifest(
            worker_id=self.worker_id, plane="python", pool=self.settings.pool,
            tasks=[spec.name for spec in self.registry.for_plane("python")],
            concurrency=self.settings.concurrency, device=device["device"], device_name=device.get("name"),
            vram_total_mb=device.get("vram_total_mb"), loaded_models=loaded, host=socket.gethostname(),
            pid=os.getpid(), version=__version__, started_at=self.started_at, heartbeat_at=time.time(),
            busy=self.consumer.busy, models=self._models,
        )

    def _unmet_requirements(self, node: Node) -> str | None:
        if node.requires is None or satisfies(self.manifest(), node):
            return None
        device = self._device_facts()
        return (f"worker {self.worker_id} ({device['device']}, {device.get('vram_total_mb') or 0} MiB) cannot meet "
                f"requires {node.requires.model_dump(exclude_none=True)} of node {node.id!r}")

    def _device_facts(self) -> dict[str, Any]:
        """Device, name and VRAM for routing; computed once (torch is asked only where a GPU may be)."""
        if self._device is None:
            from dualplane.ml.device import describe_device

            info = describe_device()
            first = info["devices"][0] if info.get("devices") else {}
            self._device = {"device": info.get("device", "cpu"), "name": first.get("name"),
                            "vram_total_mb": first["total_bytes"] // 2**20 if first else None}
        return self._device

    @property
    def torch_threads(self) -> int:
        """Intra-op threads each task thread gets (0: torch's default): oversubscribed CPU
        cores slowed the tiny pipelines 2-5x in task threads on a 2-core machine."""
        if self._torch_threads is None:
            wanted = self.settings.torch_threads
            if not wanted and self._device_facts()["device"] == "cpu":
                wanted = max(1, (os.cpu_count() or 1) // self.settings.concurrency)
            self._torch_threads = wanted
        return self._torch_threads

    def _init_task_thread(self) -> None:
        # torch is configured when a task first imports it, not imported here: most tasks never need it
        with self._torch_watch:
            if self.torch_threads and not self._torch_watched:
                from dualplane.ml.device import after_torch_import

                after_torch_import(self._configure_torch)
                self._torch_watched = True

    def _configure_torch(self, torch: Any) -> None:
        # the global count: every thread that has not run a torch operation yet takes it on its
        # first one, task threads started before torch was imported included
        torch.set_num_threads(self.torch_threads)
        gc.freeze()  # torch's objects live as long as the process, as the start-up's do

    async def run(self, *, serve_http: bool = True, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or SIGTERM/SIGINT when it is None)."""
        stop = stop or _signal_event()
        # Everything imported and compiled so far lives as long as the process: keep the
        # cyclic GC from re-scanning it on every collection of the dispatch loop's garbage.
        # torch is imported here only where a GPU may be present; elsewhere the first task that
        # imports it freezes it then (_configure_torch).
        await asyncio.to_thread(self._device_facts)
        gc.freeze()
        await self.bridge.connect()
        # without the store, nodes that need it fail transiently and are retried; the worker
        # still runs the others, and /health says it is degraded
        bucket = await self.artifacts.ensure_bucket_soon() if self.artifacts is not None else None
        await self._announce()  # visible to routing (and to its pool's check) before it consumes
        consume = asyncio.create_task(self.consumer.run(), name="consume")
        halt = asyncio.Event()
        beat = asyncio.create_task(self._publish_manifest(halt), name="manifest")
        server = self._http_server() if serve_http else None
        serve = asyncio.create_task(server.serve()) if server else None
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({stopped, consume}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            halt.set()
            await self.consumer.stop(self.settings.shutdown_grace_s)
            background = [t for t in (consume, beat, bucket, self._models_read) if t is not None]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if server and serve:
                server.stop()
                await serve
            await self.bridge.remove_worker(self.worker_id)
            await self.bridge.close()
        if self.consumer.failure is not None:
            raise PlaneFailed(f"worker {self.worker_id}: the consume loop died") from self.consumer.failure

    async def _publish_manifest(self, halt: asyncio.Event) -> None:
        """Renew the manifest until ``halt`` is set. The loop ends on the flag, not only on its
        cancellation: on Python 3.11 a cancel that lands as ``wait_for``'s inner wait completes is
        swallowed (gh-86296; ``_refresh_models`` waits so), and the loop went on sleeping while
        the worker's shutdown waited for it (a test teardown that hung for 30 s, twice in CI runs)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(halt.wait(), MANIFEST_TTL_S / 3)
            if halt.is_set():
                return
            await self._announce()

    async def _refresh_models(self) -> None:
        """Re-read the models' weights for the manifest, waiting at most MODELS_REFRESH_WAIT_S."""
        if self.models is None:
            return
        if self._models_read is None or self._models_read.done():
            self._models_read = asyncio.ensure_future(self._read_models())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._models_read), MODELS_REFRESH_WAIT_S)

    async def _read_models(self) -> None:
        try:
            facts = await self.models.store.model_facts()
        except Exception as exc:  # the manifest keeps its last known values
            log.warning("worker %s: model weights not read: %s", self.worker_id, exc)
            return
        self._models = [WorkerModel.model_validate(fact) for fact in facts]

    async def _announce(self) -> None:
        await self._refresh_models()
        try:
            manifest = self.manifest().model_dump_json().encode()
            await self.bridge.publish_capabilities(self.worker_id, manifest, MANIFEST_TTL_S)
        except Exception as exc:  # a Redis hiccup must not end the heartbeat for good
            log.error("worker %s: capability heartbeat failed: %s", self.worker_id, exc)

    def _http_server(self) -> _QuietServer:
        config = uvicorn.Config(
            self.http_app(), host=self.settings.worker_host, port=self.settings.worker_port,
            log_level="warning", ws="websockets-sansio", lifespan="off", date_header=False,
        )
        return _QuietServer(config)

    def http_app(self) -> FastAPI:
        app = FastAPI(title=f"dualplane worker {self.worker_id}")

        @app.get("/livez")
        async def livez() -> dict[str, str]:
            """The process answers (liveness): restarting a worker cannot fix an outage."""
            return {"status": "alive"}

        @app.get("/health")
        async def health() -> JSONResponse:
            """503 unless Redis and the object store both answer: a worker without its store
            cannot run media nodes (their inputs, models and outputs live there)."""
            ok = await self.bridge.ping()
            body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "redis": ok,
                                    "worker_id": self.worker_id, "busy": self.consumer.busy}
            consumer = self.consumer.health()
            if not consumer["ok"]:  # connected, yet not consuming: a loop that died or keeps failing
                body.update(status="unavailable", consumer=consumer["error"])
            if self.artifacts is not None:
                body["object_store"] = await self.artifacts.available()
                if body["status"] == "ok" and not body["object_store"]:
                    body["status"] = "degraded"
            return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            self.metrics.busy.set(self.consumer.busy)
            self.metrics.running_nodes.set(self.executor.running_nodes)
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @app.get("/debug/torch")
        async def debug_torch() -> JSONResponse:
            from dualplane.ml.device import describe_torch

            # in a task thread: its torch thread count is the one tasks get
            body = await self.executor.in_task_thread(describe_torch)
            body["warm_models"] = self.models.warm()
            return JSONResponse(body)

        return app


class _DeviceHooks(Hooks):
    """What a worker's device asks of its nodes: a node whose ``requires`` this worker cannot meet
    (sent to its pool by hand) fails rather than run on the wrong device, and the tasks' torch
    gets the worker's thread count."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def before_node(self, node: Node, spec: TaskSpec) -> None:
        unmet = self._worker._unmet_requirements(node)
        if unmet is not None:
            raise NodeRefused("RequirementsNotMet", unmet)

    def init_thread(self) -> None:
        self._worker._init_task_thread()


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its 0.1 s tick. The tick (Date header, exit flag) wakes the
    event loop ten times a second, and every wake-up takes the GIL from a Python-bound task
    thread (an idle worker's loop woke 12 times a second, measured with strace). This one sleeps
    until :meth:`stop` or a signal; responses carry no Date header."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.on_tick(0)  # the default headers, once
        if not self.should_exit:
            await self._stop.wait()

    def stop(self) -> None:
        self.should_exit = True
        self._stop.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: hand over to the loop thread-safely
            self._loop.call_soon_threadsafe(self._stop.set)
