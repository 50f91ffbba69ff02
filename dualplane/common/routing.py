"""Routing python-plane nodes to worker pools by what live workers can do.

Workers publish capability manifests (tasks, device, VRAM, loaded models) under
``worker:<id>`` with a TTL. A node that declares ``requires`` (GPU, VRAM, a model) and no
pool of its own is sent to the pool with the most free capacity among those with a live
worker that satisfies it. A node no live worker can run is *reported* — an event and a
``reason`` on the node — rather than left waiting silently; it stays queued, so a worker
that starts later still picks it up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from dualplane.common.bridge import Bridge
from dualplane.common.models import CapabilityManifest, Graph, Node

#: Manifests are re-read at most this often (routing runs on the submission hot path).
DEFAULT_REFRESH_S = 2.0
DEFAULT_POOL = "default"
#: Where GPU nodes wait when no live worker can run them.
DEFAULT_GPU_POOL = "gpu"


@dataclass(frozen=True)
class Unroutable:
    """A node no live worker can run, and why."""

    node_id: str
    reason: str


@dataclass(frozen=True)
class RoutingTable:
    """The live python workers indexed for routing, built once per read of the manifests: a
    submission looks its nodes up here instead of scanning every worker's task list."""

    by_task: dict[str, list[CapabilityManifest]] = field(default_factory=dict)
    #: (pool, task) pairs some live worker serves: the answer for a node without requirements.
    served: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, workers: Iterable[CapabilityManifest]) -> RoutingTable:
        by_task: dict[str, list[CapabilityManifest]] = {}
        for worker in workers:
            if worker.plane != "python":
                continue
            for task in set(worker.tasks):
                by_task.setdefault(task, []).append(worker)
        served = frozenset((worker.pool, task) for task, able in by_task.items() for worker in able)
        return cls(by_task, served)


class Router:
    """Chooses pools for python nodes from the live manifests.

    :param bridge: where manifests are read from.
    :param refresh_s: how long a read of the manifests is reused.
    """

    def __init__(self, bridge: Bridge, *, refresh_s: float = DEFAULT_REFRESH_S,
                 gpu_pool: str = DEFAULT_GPU_POOL) -> None:
        self._bridge = bridge
        self._gpu_pool = gpu_pool
        self._refresh_s = refresh_s
        self._manifests: list[CapabilityManifest] = []
        self._table = RoutingTable()
        self._read_at = float("-inf")
        self._reading: asyncio.Future[list[CapabilityManifest]] | None = None

    async def workers(self, *, fresh: bool = False) -> list[CapabilityManifest]:
        """The live manifests, read at most once per ``refresh_s`` however many submissions
        ask at the same moment (they share one in-flight read); ``fresh`` reads them now."""
        if not fresh and time.monotonic() - self._read_at <= self._refresh_s:
            return self._manifests
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        return await asyncio.shield(self._reading)

    async def _read(self) -> list[CapabilityManifest]:
        raw = await self._bridge.live_workers()
        manifests = [CapabilityManifest.model_validate_json(item) for item in raw]
        self._manifests, self._table = manifests, RoutingTable.of(manifests)
        self._read_at = time.monotonic()
        return self._manifests

    async def route(self, graph: Graph) -> list[Unroutable]:
        """Set the pool of python nodes with requirements; report nodes nobody can run."""
        await self.workers()
        table = self._table  # the table of the manifests just read (or reused)
        problems = []
        for node in graph.nodes:
            if node.plane != "python":
                continue
            problem = route_node(node, table, gpu_pool=self._gpu_pool)
            if problem is not None:
                problems.append(Unroutable(node.id, problem))
        return problems


def route_node(node: Node, table: RoutingTable | Iterable[CapabilityManifest], *, gpu_pool: str = "gpu") -> str | None:
    """Pick the node's pool in place (``table``: the live workers, indexed or as a list); return
    why no live worker can run it, or None.

    A GPU node nobody can run now is parked in ``gpu_pool``, never in the default pool a CPU
    worker would take it from: it waits there (its lag is what scales GPU workers from zero).
    """
    if not isinstance(table, RoutingTable):
        table = RoutingTable.of(table)
    if node.requires is None:  # the common case: one set lookup
        if (node.pool, node.task) in table.served:
            return None
        return f"no live worker in pool {node.pool!r} can run task {node.task!r}"
    able = [w for w in table.by_task.get(node.task, ()) if satisfies(w, node)]
    if node.pool != DEFAULT_POOL:
        if any(w.pool == node.pool for w in able):
            return None
        return f"no live worker in pool {node.pool!r} can run task {node.task!r}{_wants(node)}"
    if not able:
        if node.requires.gpu:
            node.pool = gpu_pool
            return f"no live worker can run task {node.task!r}{_wants(node)}; waiting in pool {gpu_pool!r}"
        return f"no live worker can run task {node.task!r}{_wants(node)}"
    # prefer a pool that already holds the model warm, then the one with most free slots
    score: dict[str, tuple[int, int]] = {}
    model = node.requires.model
    for worker in able:
        warm, free = score.get(worker.pool, (0, 0))
        score[worker.pool] = (max(warm, int(model in worker.loaded_models)),
                              free + max(0, worker.concurrency - worker.busy))
    node.pool = max(sorted(score), key=lambda pool: score[pool])
    return None


def satisfies(worker: CapabilityManifest, node: Node) -> bool:
    """Whether a worker meets a node's ``requires`` (a model need is met by loading it)."""
    needs = node.requires
    if needs is None:
        return True
    if needs.gpu and not worker.device.startswith("cuda"):
        return False
    # loaded_models only breaks ties (see route_node)
    return needs.min_vram_gb is None or (worker.vram_total_mb or 0) >= needs.min_vram_gb * 1024


def _wants(node: Node) -> str:
    needs = node.requires
    if needs is None:
        return ""
    parts = (["a GPU"] if needs.gpu else []) + ([f"{needs.min_vram_gb} GiB of VRAM"] if needs.min_vram_gb else [])
    return f" with {' and '.join(parts)}" if parts else ""
