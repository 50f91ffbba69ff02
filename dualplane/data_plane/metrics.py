"""A worker's own metrics, besides the plane's (:class:`~dualplane.common.telemetry.PlaneMetrics`):
model loads and the warm cache (:class:`ModelMetrics`), GPU memory and utilization
(:class:`GpuCollector`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dualplane.common.telemetry import CallbackCollector

if TYPE_CHECKING:
    from dualplane.ml.model_store.manager import ModelManager

log = logging.getLogger("dualplane.telemetry")

#: Model loads: a warm disk cache of a tiny model to a cold multi-GB download.
MODEL_LOAD_BUCKETS_S = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


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
        self._manager: ModelManager | None = None
        registry.register(CallbackCollector(self._collect))

    def attach(self, manager: ModelManager) -> None:
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
