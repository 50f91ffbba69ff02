"""The warm in-memory cache: what tasks get as ``ctx.models``.

:class:`ModelManager` loads a model with a task-supplied loader ``(path, device, dtype) -> object``
(the files made local by :class:`~dualplane.ml.model_store.store.ModelStore`) and keeps it warm in
an LRU bounded by bytes, so a second job with the same model pays no load. Concurrent loads of one
model load once.

torch is imported only inside functions: the control plane imports the task modules.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualplane.ml.model_store.registry import ModelEntry, ModelRegistry
from dualplane.ml.model_store.store import ModelStore, Weights

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore
    from dualplane.common.settings import ModelSettings

log = logging.getLogger(__name__)

#: ``loader(path, device, dtype, *extra_paths)``: builds the warm object from local files.
Loader = Callable[..., Any]

#: Held while torch modules are built. diffusers' ``from_pretrained`` patches process-wide state
#: (accelerate's ``init_empty_weights`` replaces ``nn.Module.register_parameter``; a dtype
#: sets torch's default dtype), so a module built meanwhile in another thread gets meta or
#: wrongly typed tensors. Every loader runs under it; a task that builds modules outside
#: :meth:`ModelManager.load` (a fresh UNet to train, LoRA layers) takes it too.
BUILD_LOCK = threading.RLock()


@dataclass
class LoadedModel:
    """What :meth:`ModelManager.load` returns.

    :param model: whatever the loader returned.
    :param load_s: seconds this call spent making the model ready (0.0 when it was warm).
    """

    model: Any
    load_s: float
    name: str = ""
    path: Path | None = None
    device: str = "cpu"
    dtype: Any = None
    size_bytes: int = 0
    cached: bool = False


@dataclass
class _Warm:
    model: Any
    name: str
    path: Path
    device: str
    dtype: Any
    size_bytes: int
    loaded_at: float = field(default_factory=time.time)


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.warm: _Warm | None = None
        self.error: BaseException | None = None


class ModelManager:
    """Loads models for tasks and keeps them warm (``ctx.models``).

    :param store: makes the files local.
    :param max_bytes: budget of the warm cache; least recently used models are dropped past it
        (the model just loaded is always kept, even alone over budget).
    :param device: force a device; by default CUDA when available, else CPU.
    """

    def __init__(self, store: ModelStore, *, max_bytes: int, device: str | None = None) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._device = device
        self._lock = threading.Lock()
        self._warm: OrderedDict[tuple[str, str], _Warm] = OrderedDict()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.loads = 0
        self.hits = 0
        #: Metrics hook ``(name, seconds, ok)`` called after every load this manager performs
        #: (warm hits are not loads; see ``hits``).
        self.on_load: Callable[[str, float, bool], None] | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            from dualplane.ml.device import select_device

            self._device = select_device()
        return self._device

    def entry(self, name: str) -> ModelEntry:
        return self.store.registry.get(name)

    async def weights(self, name: str) -> Weights:
        """Real, random or unknown weights (see :meth:`ModelStore.weights`); nothing is loaded."""
        return await self.store.weights(name)

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return sum(w.size_bytes for w in self._warm.values())

    def warm(self) -> list[dict[str, Any]]:
        """The warm models, least recently used first."""
        with self._lock:
            return [{"name": w.name, "loader": key[1], "device": w.device, "dtype": str(w.dtype),
                     "size_bytes": w.size_bytes, "loaded_at": w.loaded_at} for key, w in self._warm.items()]

    def load(self, name: str, loader: Loader, *, key: str | None = None, extra: Sequence[str] = ()) -> LoadedModel:
        """Load ``name`` with ``loader(path, device, dtype)``, or return the warm copy.

        Blocking: call it from a sync task (a worker thread); async code uses :meth:`aload`.
        ``key`` tells apart loaders that build different objects from one model (default:
        the loader's qualified name). ``extra`` names further registry models the object is
        built from (a motion adapter): they are fetched only when it is built, and their local
        directories follow ``dtype`` in the loader's arguments. A warm hit touches neither the
        object store nor the disk.
        """
        entry = self.store.registry.get(name)  # unknown names fail before anything else
        for other in extra:
            self.store.registry.get(other)
        cache_key = (name, key or _loader_key(loader))
        with self._lock:
            warm = self._warm.get(cache_key)
            if warm is not None:
                self._warm.move_to_end(cache_key)
                self.hits += 1
                return _loaded(warm, 0.0, cached=True)
            pending = self._pending.get(cache_key)
            owner = pending is None
            if pending is None:
                pending = self._pending[cache_key] = _Pending()
        started = time.perf_counter()
        if not owner:  # someone else is loading it: wait for theirs
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.warm is not None
            return _loaded(pending.warm, time.perf_counter() - started, cached=True)
        try:
            warm = self._load_now(entry, loader, extra)
            pending.warm = warm
        except BaseException as exc:
            pending.error = exc
            self._report_load(name, time.perf_counter() - started, ok=False)
            raise
        finally:
            with self._lock:
                if pending.warm is not None:
                    self._warm[cache_key] = pending.warm
                    evicted = self._evict_over_budget(keep=cache_key)
                else:
                    evicted = []
                del self._pending[cache_key]
            pending.done.set()
        self._release(evicted)
        elapsed = time.perf_counter() - started
        self._report_load(name, elapsed, ok=True)
        return _loaded(warm, elapsed)

    def _report_load(self, name: str, seconds: float, *, ok: bool) -> None:
        if self.on_load is not None:
            try:
                self.on_load(name, seconds, ok)
            except Exception:  # metrics must never fail a load
                log.exception("model load hook failed")

    async def aload(self, name: str, loader: Loader, *, key: str | None = None,
                    extra: Sequence[str] = ()) -> LoadedModel:
        """:meth:`load` for async tasks (runs it in a thread)."""
        return await asyncio.to_thread(self.load, name, loader, key=key, extra=extra)

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._warm.values())
            self._warm.clear()
        self._release(dropped)

    def free_memory(self) -> int:
        """After an out-of-memory error: drop every warm model, collect garbage and hand
        torch's cached CUDA blocks back, so the retry has the memory that can be had. Models
        that running jobs hold stay with them (and load again next time). Returns how many
        were dropped."""
        import gc

        with self._lock:
            dropped = list(self._warm.values())
            self._warm.clear()
        count = len(dropped)
        dropped.clear()
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        return count

    def _load_now(self, entry: ModelEntry, loader: Loader, extra: Sequence[str]) -> _Warm:
        from dualplane.common.quiet import quiet_model_libraries
        from dualplane.ml.device import select_dtype

        path = _run_blocking(self.store.ensure_local(entry.name))
        extra_paths = [_run_blocking(self.store.ensure_local(other)) for other in extra]
        device = self.device
        dtype = select_dtype(device, entry.dtype)
        with BUILD_LOCK:
            # no progress bar per file in the worker's log: for the libraries imported so far, and
            # from the next load on for the one this loader imports
            quiet_model_libraries()
            model = loader(path, device, dtype, *extra_paths)
            quiet_model_libraries()
        size = estimate_bytes(model) or _dir_bytes(path)
        self.loads += 1
        return _Warm(model=model, name=entry.name, path=path, device=device, dtype=dtype, size_bytes=size)

    def _evict_over_budget(self, *, keep: tuple[str, str]) -> list[_Warm]:
        """Pop least recently used models until under budget (caller holds the lock)."""
        dropped = []
        total = sum(w.size_bytes for w in self._warm.values())
        for cache_key in list(self._warm):
            if total <= self.max_bytes:
                break
            if cache_key == keep:
                continue
            warm = self._warm.pop(cache_key)
            total -= warm.size_bytes
            dropped.append(warm)
            log.info("model %s evicted from the warm cache (%d bytes)", warm.name, warm.size_bytes)
        return dropped

    def _release(self, dropped: list[_Warm]) -> None:
        if not dropped:
            return
        on_cuda = any(w.device.startswith("cuda") for w in dropped)
        dropped.clear()
        if on_cuda:
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()


def _loaded(warm: _Warm, load_s: float, *, cached: bool = False) -> LoadedModel:
    return LoadedModel(model=warm.model, load_s=load_s, name=warm.name, path=warm.path, device=warm.device,
                       dtype=warm.dtype, size_bytes=warm.size_bytes, cached=cached)


def _loader_key(loader: Loader) -> str:
    """Module, qualified name and first line: stable for a nested function re-created per
    call, distinct for two lambdas of one function."""
    line = getattr(getattr(loader, "__code__", None), "co_firstlineno", "")
    return f"{getattr(loader, '__module__', '')}.{getattr(loader, '__qualname__', repr(loader))}:{line}"


def _run_blocking(coro: Any) -> Any:
    """Run a coroutine from a worker thread (which has no event loop of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("ModelManager.load blocks; from async code use `await ctx.models.aload(...)`")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def estimate_bytes(obj: Any) -> int:
    """Bytes of the torch parameters and buffers reachable from ``obj`` (modules, pipelines,
    tuples, dicts, plain objects a few levels deep); shared tensors count once."""
    try:
        import torch
    except ImportError:
        return 0
    seen_objs: set[int] = set()
    seen_tensors: set[tuple[str, int]] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        if t.device.type == "meta":
            return
        ident = (str(t.device), t.data_ptr())
        if ident not in seen_tensors:
            seen_tensors.add(ident)
            total += t.numel() * t.element_size()

    def visit(o: Any, depth: int) -> None:
        if depth > 4 or id(o) in seen_objs or o is None or isinstance(o, str | bytes | int | float):
            return
        seen_objs.add(id(o))
        if isinstance(o, torch.nn.Module):
            for t in _chain(o.parameters(), o.buffers()):
                add(t)
        elif isinstance(o, torch.Tensor):
            add(o)
        elif isinstance(o, dict):
            for v in o.values():
                visit(v, depth + 1)
        elif isinstance(o, list | tuple | set):
            for v in o:
                visit(v, depth + 1)
        elif isinstance(getattr(o, "components", None), dict):  # a diffusers pipeline
            visit(o.components, depth + 1)
        elif hasattr(o, "__dict__"):
            for v in vars(o).values():
                visit(v, depth + 1)

    visit(obj, 0)
    return total


def _chain(*iterables: Any) -> Iterator[Any]:
    for iterable in iterables:
        yield from iterable


def manager_from_settings(models: ModelSettings, artifacts: ArtifactStore | None) -> ModelManager:
    """The worker's model manager: registry from ``models_config`` (or the packaged one), cache
    in ``model_cache_dir``, warm budget ``model_cache_max_bytes``. Imports no torch."""
    registry = ModelRegistry.from_settings(models)
    store = ModelStore(registry, artifacts, Path(models.model_cache_dir))
    return ModelManager(store, max_bytes=models.model_cache_max_bytes)
