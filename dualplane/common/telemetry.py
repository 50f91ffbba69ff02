"""Prometheus metrics of a plane, on a registry the process owns (no global state).

Every metric is named ``dualplane_<what>_<unit>`` (Prometheus conventions: base units,
``_total`` for counters). What each process exports:

* both planes — :class:`PlaneMetrics`: jobs submitted / finished by status and task, job and
  node duration histograms, handoffs, reclaimed messages, dead letters, stale handoffs,
  busy jobs, task throughput (tokens/s, steps/s);
* the control plane — :class:`QueueCollector` (stream lag, pending, length, dead letters,
  live workers per pool, read from Redis at scrape time) and :class:`HubCollector`
  (WebSocket connections and messages sent);
* workers — :class:`ModelMetrics` (model loads and their seconds, warm cache) and
  :class:`GpuCollector` (torch CUDA memory; NVML utilization when ``nvidia-ml-py`` is
  installed; nothing on a CPU host).

**Processes.** A dualplane service is one process: the control plane runs a single uvicorn
worker process per container and scales by replicas, a worker is one process per
container/pool slot. Each process has its own registry, and Prometheus scrapes each
process as its own target and aggregates with ``sum by``/``max by``. That is why there is
no ``PROMETHEUS_MULTIPROC_DIR`` mode: it would only be needed if one HTTP port fronted
several Python processes (``uvicorn --workers N``), which the deployment never does.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dualplane.common.hooks import Hooks

if TYPE_CHECKING:
    from dualplane.common.bridge import Bridge
    from dualplane.common.registry import TaskSpec

log = logging.getLogger("dualplane.telemetry")

#: Node durations from a no-op (sub-millisecond) to a LoRA training run (an hour).
DURATION_BUCKETS_S = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)
#: Submit-to-finish of whole jobs: a few milliseconds (dispatch) to hours (training + queueing).
JOB_DURATION_BUCKETS_S = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 1800, 3600, 4 * 3600)
#: Model loads: a warm disk cache of a tiny model to a cold multi-GB download.
MODEL_LOAD_BUCKETS_S = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
#: Tokens or denoising/training steps per second of a task run.
RATE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

#: Output fields a task may report its speed in, and the histogram each goes to.
THROUGHPUT_FIELDS = ("tokens_per_s", "steps_per_s")


def job_task(graph: Any) -> str:
    """The ``task`` label of a job: the task of its one sink node (the node nothing else
    needs, i.e. what produces the result), ``multi`` when several nodes are sinks.

    Bounded by the task catalog, so safe as a label; computed from the graph alone, so the
    plane that submits and the plane that finishes label a job the same way."""
    nodes = graph.nodes
    if len(nodes) == 1:
        return str(nodes[0].task)
    needed = {need for node in nodes for need in node.needs}
    sinks = {node.task for node in nodes if node.id not in needed}
    return str(sinks.pop()) if len(sinks) == 1 else "multi"


class PlaneMetrics(Hooks):
    """Counters and histograms one plane exports on ``/metrics``; the plane's executor and
    consumer update them as hooks (the ``after_*`` methods).

    :param registry: where to register; None builds a private registry (tests, benchmarks).
    :param plane: ``control`` or ``python``, added as a constant label.
    """

    def __init__(self, registry: CollectorRegistry | None, plane: str) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.plane = plane
        reg = self.registry
        self.jobs_submitted = Counter(
            "dualplane_jobs_submitted_total", "Jobs accepted by this control plane, by the task of their result node.",
            ["task"], registry=reg)
        self.jobs_finished = Counter(
            "dualplane_jobs_finished_total", "Jobs finished on this plane, by final status and result task.",
            ["status", "task"], registry=reg)
        self.job_duration = Histogram(
            "dualplane_job_duration_seconds", "Submit-to-finish wall time of jobs finished on this plane.",
            ["status", "task"], buckets=JOB_DURATION_BUCKETS_S, registry=reg)
        self.nodes_finished = Counter(
            "dualplane_nodes_finished_total", "Nodes that reached a terminal status.",
            ["task", "status"], registry=reg)
        self.node_duration = Histogram(
            "dualplane_node_duration_seconds", "Wall time of one node attempt.", ["task"],
            buckets=DURATION_BUCKETS_S, registry=reg)
        self.tokens_per_s = Histogram(
            "dualplane_task_tokens_per_second", "Generation speed tasks report (output field tokens_per_s).",
            ["task"], buckets=RATE_BUCKETS, registry=reg)
        self.steps_per_s = Histogram(
            "dualplane_task_steps_per_second",
            "Denoising or training speed tasks report (output field steps_per_s).",
            ["task"], buckets=RATE_BUCKETS, registry=reg)
        self.handoffs = Counter(
            "dualplane_handoffs_total", "Graphs handed to another lane.", ["to"], registry=reg)
        self.dead_letters = Counter(
            "dualplane_dead_letters_total", "Messages moved to the dead-letter stream.", ["stream"], registry=reg)
        self.reclaimed = Counter(
            "dualplane_reclaimed_messages_total", "Abandoned messages taken over after their lease.", registry=reg)
        self.stale_handoffs = Counter(
            "dualplane_stale_handoffs_total", "Handoffs rejected by the fencing sequence.", registry=reg)
        self.requeued = Counter(
            "dualplane_jobs_requeued_total", "Unfinished jobs whose stream entry was lost, handed on again.",
            registry=reg)
        self.redis_data_lost = Counter(
            "dualplane_redis_data_loss_total", "Times Redis was found emptied (its instance marker gone).",
            registry=reg)
        self.busy = Gauge("dualplane_busy_jobs", "Jobs held by this process right now.", registry=reg)
        self.running_nodes = Gauge(
            "dualplane_running_nodes", "Nodes executing in this process right now.", registry=reg)
        self.concurrency = Gauge(
            "dualplane_concurrency_slots", "Jobs this process may hold at once (busy_jobs / slots = utilization).",
            registry=reg)
        self.info = Gauge("dualplane_plane_info", "Which plane this process serves.", ["plane"], registry=reg)
        self.info.labels(plane=plane).set(1)
        self._throughput = {"tokens_per_s": self.tokens_per_s, "steps_per_s": self.steps_per_s}

    def node_finished(self, task: str, status: str, duration_s: float,
                      output: Mapping[str, Any] | None = None) -> None:
        """One attempt ended; ``retrying`` attempts count towards duration only. A succeeded
        node's ``tokens_per_s`` / ``steps_per_s`` outputs go to the throughput histograms."""
        if status != "retrying":
            self.nodes_finished.labels(task=task, status=status).inc()
        self.node_duration.labels(task=task).observe(duration_s)
        if output:
            for name, histogram in self._throughput.items():
                value = output.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    histogram.labels(task=task).observe(value)

    # -- as hooks ------------------------------------------------------------------------

    def after_attempt(self, spec: TaskSpec, outcome: str, elapsed_s: float, output: dict[str, Any] | None) -> None:
        self.node_finished(spec.name, outcome, elapsed_s, output)

    def after_reclaim(self, count: int) -> None:
        self.reclaimed.inc(count)

    def after_dead_letter(self, lane: str) -> None:
        self.dead_letters.labels(stream=lane).inc()

    def after_stale_handoff(self) -> None:
        self.stale_handoffs.inc()

    def after_handoff(self, target: str) -> None:
        self.handoffs.labels(to=target).inc()

    def after_job_finished(self, graph: Any, outcome: str, created_at: float | None) -> None:
        self.job_finished(graph, outcome, created_at)

    def job_submitted(self, graph: Any) -> None:
        self.jobs_submitted.labels(task=job_task(graph)).inc()

    def job_finished(self, graph: Any, status: str, created_at: float | None) -> None:
        task = job_task(graph)
        self.jobs_finished.labels(status=status, task=task).inc()
        if created_at:
            self.job_duration.labels(status=status, task=task).observe(max(0.0, time.time() - created_at))


# -- workers: models ------------------------------------------------------------------------


class ModelMetrics:
    """Model loads of a worker's :class:`~dualplane.ml.model_store.ModelManager`.

    Install with :meth:`attach`: the manager calls :meth:`on_load` after every load it
    performs (not for warm hits, which are read from its counters at scrape time).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.loads = Counter(
            "dualplane_model_loads_total", "Model loads performed (cold: files made local and loaded).",
            ["model", "result"], registry=registry)
        self.load_seconds = Histogram(
            "dualplane_model_load_seconds", "Time to make a model local and load it onto its device.",
            ["model"], buckets=MODEL_LOAD_BUCKETS_S, registry=registry)
        self._manager: Any = None
        registry.register(_Callback(self._collect))

    def attach(self, manager: Any) -> None:
        self._manager = manager
        manager.on_load = self.on_load

    def on_load(self, model: str, seconds: float, ok: bool) -> None:
        self.loads.labels(model=model, result="ok" if ok else "error").inc()
        if ok:
            self.load_seconds.labels(model=model).observe(seconds)

    def _collect(self) -> Iterator[Metric]:
        manager = self._manager
        if manager is None:
            return
        hits = CounterMetricFamily("dualplane_model_cache_hits", "Model requests served by the warm cache.")
        hits.add_metric([], float(manager.hits))
        yield hits
        warm = GaugeMetricFamily("dualplane_model_warm_bytes", "Bytes of models kept warm (estimated).")
        warm.add_metric([], float(manager.bytes_used))
        yield warm
        count = GaugeMetricFamily("dualplane_model_warm_models", "Models kept warm.")
        count.add_metric([], float(len(manager.warm())))
        yield count


# -- workers: GPUs --------------------------------------------------------------------------


class GpuCollector(Collector):
    """GPU memory and utilization of the worker's process, read at scrape time.

    * torch: ``memory_allocated`` / ``memory_reserved`` per device, only when torch is
      already imported by a task and CUDA is initialized (a scrape never imports torch or
      creates a CUDA context);
    * NVML (``nvidia-ml-py``, optional): device utilization, memory used and total — the
      same figures DCGM has, labelled by this worker, for hosts without dcgm-exporter.

    On a CPU host, or without either library, it yields nothing.
    """

    #: Every metric it can export on a CUDA host with NVML (the dashboards are checked
    #: against this list where no GPU is present to produce them).
    METRIC_NAMES: ClassVar[frozenset[str]] = frozenset({
        "dualplane_gpu_memory_allocated_bytes", "dualplane_gpu_memory_reserved_bytes",
        "dualplane_gpu_memory_total_bytes", "dualplane_gpu_utilization_ratio",
        "dualplane_gpu_memory_used_bytes", "dualplane_gpu_memory_capacity_bytes",
    })

    def __init__(self) -> None:
        self._nvml: Any = None
        self._nvml_failed = False

    def collect(self) -> Iterator[Metric]:
        yield from self._torch()
        yield from self._nvml_metrics()

    def _torch(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
                return
            allocated = GaugeMetricFamily(
                "dualplane_gpu_memory_allocated_bytes", "CUDA memory held by tensors (torch).", labels=["gpu"])
            reserved = GaugeMetricFamily(
                "dualplane_gpu_memory_reserved_bytes", "CUDA memory reserved by torch's caching allocator.",
                labels=["gpu"])
            total = GaugeMetricFamily("dualplane_gpu_memory_total_bytes", "Memory of the device.", labels=["gpu"])
            for index in range(torch.cuda.device_count()):
                gpu = str(index)
                allocated.add_metric([gpu], float(torch.cuda.memory_allocated(index)))
                reserved.add_metric([gpu], float(torch.cuda.memory_reserved(index)))
                total.add_metric([gpu], float(torch.cuda.get_device_properties(index).total_memory))
        except Exception as exc:  # a broken driver must not break /metrics
            log.debug("torch GPU metrics unavailable: %s", exc)
            return
        yield from (allocated, reserved, total)

    def _nvml_handle(self) -> Any:
        if self._nvml is not None or self._nvml_failed:
            return self._nvml
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # not installed, or no NVIDIA driver on this host
            self._nvml_failed = True
        return self._nvml

    def _nvml_metrics(self) -> Iterator[Metric]:
        nvml = self._nvml_handle()
        if nvml is None:
            return
        util = GaugeMetricFamily("dualplane_gpu_utilization_ratio", "GPU busy fraction over the last sample "
                                 "period (NVML).", labels=["gpu"])
        used = GaugeMetricFamily("dualplane_gpu_memory_used_bytes", "Device memory in use by every process (NVML).",
                                 labels=["gpu"])
        total = GaugeMetricFamily("dualplane_gpu_memory_capacity_bytes", "Device memory (NVML).", labels=["gpu"])
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(index)], rates.gpu / 100.0)
                used.add_metric([str(index)], float(memory.used))
                total.add_metric([str(index)], float(memory.total))
        except Exception as exc:
            log.debug("NVML metrics unavailable: %s", exc)
            return
        yield from (util, used, total)


# -- control plane: queues and workers, from Redis ------------------------------------------


class QueueCollector(Collector):
    """Stream and worker-pool state read from Redis.

    ``collect`` is synchronous (prometheus-client calls it from ``generate_latest``), and the
    bridge is async, so the ``/metrics`` handler awaits :meth:`refresh` first and ``collect``
    yields that snapshot. Refreshes closer together than ``min_interval_s`` reuse the last one,
    so many scrapers (or replicas behind one Service) cost Redis little. A failed refresh
    exports ``dualplane_redis_up 0`` and no stream series (stale numbers would look healthy).
    """

    def __init__(self, bridge: Bridge, *, min_interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self._bridge = bridge
        self._min_interval_s = min_interval_s
        self._timeout_s = timeout_s
        self._at = 0.0
        self._ok = False
        self._snapshot: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._at < self._min_interval_s:
                return
            try:
                self._snapshot = await asyncio.wait_for(self._read(), self._timeout_s)
                self._ok = True
            except Exception as exc:  # Redis down or slow: say so, keep /metrics answering
                log.warning("queue metrics: Redis read failed: %s", exc)
                self._ok, self._snapshot = False, {}
            self._at = time.monotonic()

    async def _read(self) -> dict[str, Any]:
        keys = self._bridge.keys
        data_prefix = keys.data_stream("")
        lanes, dead = await self._bridge.lane_streams()
        rows = []
        for lane in lanes:
            stream = lane.stream
            pool = stream[len(data_prefix):] if stream.startswith(data_prefix) else ""
            label = stream[len(keys.prefix):].removeprefix("stream:")
            for info in lane.groups:
                rows.append({"stream": label, "pool": pool, "group": _text(info.get("name")),
                             "length": lane.length, "pending": int(info.get("pending") or 0),
                             "lag": None if info.get("lag") is None else int(info["lag"]),
                             "consumers": int(info.get("consumers") or 0)})
            if not lane.groups:
                # no consumer has created the group yet (a pool with no worker): it will be created
                # at id 0, so everything in the stream is its lag
                rows.append({"stream": label, "pool": pool, "group": keys.group_for_stream(stream),
                             "length": lane.length, "pending": 0, "lag": lane.length, "consumers": 0})
        workers = await _worker_pools(self._bridge)
        return {"streams": rows, "dead": dead, "workers": workers}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("dualplane_redis_up", "1 when the last queue-metrics read from Redis worked.")
        up.add_metric([], 1.0 if self._ok else 0.0)
        yield up
        if not self._ok:
            return
        labels = ["stream", "pool", "group"]
        length = GaugeMetricFamily(
            "dualplane_stream_entries", "Entries kept in the stream (XLEN; acknowledged ones included).", labels=labels)
        pending = GaugeMetricFamily(
            "dualplane_stream_pending_messages", "Delivered to a consumer, not yet acknowledged (XPENDING).",
            labels=labels)
        lag = GaugeMetricFamily(
            "dualplane_stream_lag_messages", "Not yet delivered to the consumer group (XINFO GROUPS lag).",
            labels=labels)
        queued = GaugeMetricFamily(
            "dualplane_queue_messages", "Queue length: lag + pending (waiting or being worked on).", labels=labels)
        consumers = GaugeMetricFamily(
            "dualplane_stream_consumers", "Consumers known to the group (dead ones stay until removed).",
            labels=labels)
        for row in self._snapshot.get("streams", []):
            values = [row["stream"], row["pool"], row["group"]]
            length.add_metric(values, row["length"])
            pending.add_metric(values, row["pending"])
            consumers.add_metric(values, row["consumers"])
            if row["lag"] is not None:
                lag.add_metric(values, row["lag"])
                queued.add_metric(values, row["lag"] + row["pending"])
        yield from (length, pending, lag, queued, consumers)
        dead = GaugeMetricFamily("dualplane_dead_letter_messages", "Messages in the dead-letter stream.")
        dead.add_metric([], self._snapshot.get("dead", 0))
        yield dead
        live = GaugeMetricFamily("dualplane_live_workers", "Workers with a live capability key, by pool.",
                                 labels=["pool"])
        slots = GaugeMetricFamily("dualplane_live_worker_slots", "Concurrency of the live workers, by pool.",
                                  labels=["pool"])
        busy = GaugeMetricFamily("dualplane_live_worker_busy_jobs", "Jobs the live workers hold, by pool "
                                 "(as of their last heartbeat).", labels=["pool"])
        for pool, (count, concurrency, held) in sorted(self._snapshot.get("workers", {}).items()):
            live.add_metric([pool], count)
            slots.add_metric([pool], concurrency)
            busy.add_metric([pool], held)
        yield from (live, slots, busy)


async def _worker_pools(bridge: Bridge) -> dict[str, tuple[int, int, int]]:
    import orjson

    pools: dict[str, list[int]] = {}
    for raw in await bridge.live_workers():
        try:
            manifest = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        totals = pools.setdefault(str(manifest.get("pool") or "default"), [0, 0, 0])
        totals[0] += 1
        totals[1] += int(manifest.get("concurrency") or 0)
        totals[2] += int(manifest.get("busy") or 0)
    return {pool: (a, b, c) for pool, (a, b, c) in pools.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- control plane: the WebSocket hub -------------------------------------------------------

#: hub.stats key → (metric name without _total, help).
_HUB_COUNTERS = {
    "delivered": ("dualplane_websocket_messages_sent", "Job updates sent to WebSocket clients."),
    "published": ("dualplane_hub_events_received", "Job events the hub received from Redis Pub/Sub."),
    "gaps": ("dualplane_hub_gaps", "Pub/Sub gaps the hub filled from the events streams."),
    "slow_closed": ("dualplane_websocket_slow_closed", "Connections closed because the client was too slow."),
    "resubscribes": ("dualplane_hub_resubscribes", "Times the hub re-subscribed after losing Redis."),
}


class HubCollector(Collector):
    """Reads the hub's own counters at scrape time (the hub keeps plain ints in ``stats``
    and a ``connections`` count, so its hot path has no metric calls)."""

    def __init__(self) -> None:
        self.hub: Any = None

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        connections = GaugeMetricFamily("dualplane_websocket_connections", "Open WebSocket connections.")
        connections.add_metric([], float(hub.connections) if hub is not None else 0.0)
        yield connections
        stats: Mapping[str, int] = getattr(hub, "stats", None) or {}
        for key, (name, doc) in _HUB_COUNTERS.items():
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(stats.get(key, 0)))
            yield family


class _Callback(Collector):
    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[Metric]:
        return self._fn()
