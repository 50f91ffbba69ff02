"""Model weights in three layers, each usable alone: the registry (name → source), the on-disk
cache (:mod:`.store`) and the warm in-memory cache (:mod:`.manager`, ``ctx.models``)."""

from dualplane.ml.model_store.manager import BUILD_LOCK, LoadedModel, Loader, ModelManager, manager_from_settings
from dualplane.ml.model_store.registry import MODEL_PREFIX, ModelEntry, ModelError, ModelRegistry, UnknownModel
from dualplane.ml.model_store.store import (
    MANIFEST,
    TINY_MARKER,
    WEIGHTS,
    ModelIntegrityError,
    ModelStore,
    ModelUnavailable,
    Weights,
    build_manifest,
    upload_model_dir,
    weights_of,
)

__all__ = [
    "BUILD_LOCK", "MANIFEST", "MODEL_PREFIX", "TINY_MARKER", "WEIGHTS", "LoadedModel", "Loader", "ModelEntry",
    "ModelError", "ModelIntegrityError", "ModelManager", "ModelRegistry", "ModelStore", "ModelUnavailable",
    "UnknownModel", "Weights", "build_manifest", "manager_from_settings", "upload_model_dir", "weights_of",
]  # fmt: skip
