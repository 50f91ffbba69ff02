"""The control plane's own metrics, besides the plane's (:class:`~dualplane.common.telemetry.PlaneMetrics`):
streams and worker pools read from Redis (:class:`QueueCollector`), the WebSocket hub's
counters (:class:`HubCollector`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dualplane.common.bridge import Bridge
    from dualplane.control_plane.hub import Hub

log = logging.getLogger("dualplane.telemetry")


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
        lanes, dead = await self._bridge.lane_streams()
        # one series per lane and group, its partitions' streams summed: the dashboards and
        # alerts speak of lanes and pools, whatever the partition count
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for lane in lanes:
            stream = lane.stream
            pool = keys.pool_of_stream(stream) or ""
            label = f"data:{pool}" if pool else "control"
            groups = lane.groups or [
                # no consumer has created the group yet (a pool with no worker): it will be created
                # at id 0, so everything in the stream is its lag
                {"name": keys.group_for_stream(stream), "pending": 0, "lag": lane.length, "consumers": 0}]
            for info in groups:
                group = _text(info.get("name"))
                row = rows.setdefault((label, group), {"stream": label, "pool": pool, "group": group, "length": 0,
                                                       "pending": 0, "lag": 0, "consumers": 0})
                row["length"] += lane.length
                row["pending"] += int(info.get("pending") or 0)
                # an unknown lag (entries deleted mid-way) makes the lane's unknown
                row["lag"] = None if info.get("lag") is None or row["lag"] is None else row["lag"] + int(info["lag"])
                row["consumers"] = max(row["consumers"], int(info.get("consumers") or 0))
        workers = await _worker_pools(self._bridge)
        return {"streams": list(rows.values()), "dead": dead, "workers": workers}

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
        self.hub: Hub | None = None

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
