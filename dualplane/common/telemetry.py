"""Prometheus metrics of a plane, on a registry the process owns (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Node durations from a no-op (sub-millisecond) to a LoRA training run (an hour).
DURATION_BUCKETS_S = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)


class PlaneMetrics:
    """Counters and histograms one plane exports on ``/metrics``.

    :param registry: where to register; None builds a private registry (tests, benchmarks).
    :param plane: ``control`` or ``python``, added as a constant label.
    """

    def __init__(self, registry: CollectorRegistry | None, plane: str) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = {"plane": plane}
        reg = self.registry
        self.nodes_finished = Counter(
            "dualplane_nodes_finished_total", "Nodes that reached a terminal status.",
            ["task", "status"], registry=reg)
        self.node_duration = Histogram(
            "dualplane_node_duration_seconds", "Wall time of one node attempt.", ["task"],
            buckets=DURATION_BUCKETS_S, registry=reg)
        self.jobs_finished = Counter(
            "dualplane_jobs_finished_total", "Jobs finished on this plane, by final status.", ["status"],
            registry=reg)
        self.handoffs = Counter(
            "dualplane_handoffs_total", "Graphs handed to another lane.", ["to"], registry=reg)
        self.dead_letters = Counter(
            "dualplane_dead_letters_total", "Messages moved to the dead-letter stream.", ["stream"], registry=reg)
        self.reclaimed = Counter(
            "dualplane_reclaimed_messages_total", "Abandoned messages taken over after their lease.", registry=reg)
        self.stale_handoffs = Counter(
            "dualplane_stale_handoffs_total", "Handoffs rejected by the fencing sequence.", registry=reg)
        self.busy = Gauge("dualplane_busy_jobs", "Jobs held by this process right now.", registry=reg)
        self.info = Gauge("dualplane_plane_info", "Which plane this process serves.", list(labels), registry=reg)
        self.info.labels(**labels).set(1)

    def node_finished(self, task: str, status: str, duration_s: float) -> None:
        """One attempt ended; ``retrying`` attempts count towards duration only."""
        if status != "retrying":
            self.nodes_finished.labels(task=task, status=status).inc()
        self.node_duration.labels(task=task).observe(duration_s)
