"""Prometheus metrics of a plane, on a registry the process owns (no global state).

Every metric is named ``dualplane_<what>_<unit>`` (Prometheus conventions: base units,
``_total`` for counters). What each process exports:

* both planes — :class:`PlaneMetrics` (here, a :class:`~dualplane.common.hooks.Hooks`): jobs
  submitted / finished by status and task, job and node duration histograms, handoffs,
  reclaimed messages, dead letters, stale handoffs, busy jobs, task throughput (tokens/s, steps/s);
* the control plane — ``control_plane/metrics.py``: ``QueueCollector`` (stream lag, pending,
  length, dead letters, live workers per pool, read from Redis at scrape time) and
  ``HubCollector`` (WebSocket connections and messages sent);
* workers — ``data_plane/metrics.py``: ``ModelMetrics`` (model loads and their seconds, warm
  cache) and ``GpuCollector`` (torch CUDA memory; NVML utilization when ``nvidia-ml-py`` is
  installed; nothing on a CPU host).

**Processes.** A dualplane service is one process: the control plane runs a single uvicorn
worker process per container and scales by replicas, a worker is one process per
container/pool slot. Each process has its own registry, and Prometheus scrapes each
process as its own target and aggregates with ``sum by``/``max by``. That is why there is
no ``PROMETHEUS_MULTIPROC_DIR`` mode: it would only be needed if one HTTP port fronted
several Python processes (``uvicorn --workers N``), which the deployment never does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from dualplane.common.hooks import Hooks

if TYPE_CHECKING:
    from dualplane.common.registry import TaskSpec

log = logging.getLogger("dualplane.telemetry")

#: Node durations from a no-op (sub-millisecond) to a LoRA training run (an hour).
DURATION_BUCKETS_S = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)
#: Submit-to-finish of whole jobs: a few milliseconds (dispatch) to hours (training + queueing).
JOB_DURATION_BUCKETS_S = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 1800, 3600, 4 * 3600)
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
        #: Label children already made: prometheus-client's labels() checks and locks on every
        #: call, several times a job on the dispatch path. Bounded by tasks × statuses × lanes.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, made once."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[metric, values] = metric.labels(*values)
        return child

    def node_finished(self, task: str, status: str, duration_s: float,
                      output: Mapping[str, Any] | None = None) -> None:
        """One attempt ended; ``retrying`` attempts count towards duration only. A succeeded
        node's ``tokens_per_s`` / ``steps_per_s`` outputs go to the throughput histograms."""
        if status != "retrying":
            self._child(self.nodes_finished, task, status).inc()
        self._child(self.node_duration, task).observe(duration_s)
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
        self._child(self.handoffs, target).inc()

    def after_job_finished(self, graph: Any, outcome: str, created_at: float | None) -> None:
        self.job_finished(graph, outcome, created_at)

    def job_submitted(self, graph: Any) -> None:
        self._child(self.jobs_submitted, job_task(graph)).inc()

    def job_finished(self, graph: Any, status: str, created_at: float | None) -> None:
        task = job_task(graph)
        self._child(self.jobs_finished, status, task).inc()
        if created_at:
            self._child(self.job_duration, status, task).observe(max(0.0, time.time() - created_at))


class CallbackCollector(Collector):
    """A collector whose metrics a function yields at scrape time."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[Metric]:
        return self._fn()
