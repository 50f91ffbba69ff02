"""Real weights into the object store: ``dualplane models pull NAME --from-dir DIR | --from-hub ID``.

A pull uploads a checkpoint directory (what ``save_pretrained`` writes, or a hub snapshot) under
the registry entry's ``s3:`` prefix with its manifest, which says ``"weights": "real"`` and where
they came from. Workers then download it through the same path as the tiny models, and publish
"real" for that name in their capability manifest.

huggingface_hub is imported only for ``--from-hub``; it is the one place a hub is used, and only
where one is reachable (the worker never downloads from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualplane.ml.model_store import MODEL_PREFIX, ModelError, ModelRegistry, upload_model_dir
from dualplane.ml.model_store.registry import check_rel_path

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore

#: Files of other frameworks (TF, Flax, ONNX, Rust) and original-format checkpoints that hub
#: repositories often carry beside the torch weights the loaders read: always skipped (``--exclude``
#: adds to them).
DEFAULT_HUB_EXCLUDE = ("*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "*.tflite", "*.pb")


class PullError(ModelError):
    """A pull that cannot go ahead; its message is the one line the command prints."""


@dataclass(frozen=True)
class PullTarget:
    """Where a pull goes.

    :param registered: False when NAME is not in the registry yet (then :meth:`registry_snippet`
        says what to add).
    """

    name: str
    kind: str
    prefix: str
    registered: bool

    def registry_snippet(self) -> str:
        return f'[models.{self.name}]\nkind = "{self.kind}"\nsource = "s3:{self.prefix}"\n'


def resolve_target(registry: ModelRegistry, name: str, kind: str | None, *,
                   model_prefix: str = MODEL_PREFIX) -> PullTarget:
    """The registry entry's ``s3:`` prefix; a name not in the registry needs ``kind`` and goes
    under ``model_prefix``."""
    if name in registry:
        entry = registry.get(name)
        if kind is not None and kind != entry.kind:
            raise PullError(f"model {name!r} is a {entry.kind!r} in {registry.origin}, not a {kind!r}")
        if entry.scheme != "s3":
            raise PullError(f"model {name!r} comes from {entry.source!r} in {registry.origin}; a pull uploads "
                            f"to the object store, so its source must be 's3:<prefix>'")
        return PullTarget(name, entry.kind, entry.location.strip("/"), registered=True)
    if kind is None:
        known = ", ".join(registry.names()) or "none"
        raise PullError(f"unknown model {name!r} (registry {registry.origin}; known: {known}); give --kind "
                        f"to upload it under {model_prefix}/{name}/ and add it to a registry file")
    check_rel_path(name, "model name")
    return PullTarget(name, kind, f"{model_prefix}/{name}", registered=False)


async def pull_dir(artifacts: ArtifactStore, target: PullTarget, directory: Path, *, origin: str) -> dict[str, Any]:
    """Upload ``directory`` as ``target``'s real weights; returns the manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PullError(f"{directory} is not a directory")
    await artifacts.ensure_bucket()
    return await upload_model_dir(artifacts, target.name, directory, prefix=target.prefix, weights="real",
                                  origin=origin)


def download_hub(repo_id: str, into: Path, *, revision: str | None = None,
                 include: list[str] | None = None, exclude: list[str] | None = None) -> Path:
    """A snapshot of ``repo_id`` in ``into`` (blocking); any failure is one :class:`PullError` line."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PullError("--from-hub needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        path = snapshot_download(repo_id, revision=revision, local_dir=into, allow_patterns=include,
                                 ignore_patterns=[*DEFAULT_HUB_EXCLUDE, *(exclude or ())])
    except Exception as exc:  # offline, unreachable, unknown repo, gated, disk full: all say so in one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PullError(f"cannot download {repo_id!r} from the model hub: {type(exc).__name__}: {reason[:300]}") from None
    return Path(path)


def hub_origin(repo_id: str, revision: str | None) -> str:
    return f"hub:{repo_id}" + (f"@{revision}" if revision else "")
