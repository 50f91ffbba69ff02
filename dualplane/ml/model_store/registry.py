"""The model registry: which model names exist and where their weights come from.

:class:`ModelRegistry` reads ``models.toml`` (the packaged one beside this module, or
``ModelSettings.models_config``): each name's ``kind``, ``source`` (``s3:<prefix>``, ``local:<dir>``,
``hub:<id>``, ``package:<module>``), ``dtype`` and per-model ``limits``. It is a TOML reader with
no I/O beyond the file, so both planes read it: the worker to fetch and load weights, the control
plane for the limits the planner keeps inside and the models the UI lists.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualplane.common.errors import DualplaneError

if TYPE_CHECKING:
    from dualplane.common.settings import ModelSettings

#: Object-store prefix models are uploaded under (``models/<name>/``).
MODEL_PREFIX = "models"
_SCHEMES = ("s3", "local", "hub", "package")


class ModelError(DualplaneError):
    """A model could not be found, fetched or loaded."""


class UnknownModel(ModelError, LookupError):
    """The name is not in the model registry."""


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
            text = resources.files("dualplane.ml.model_store").joinpath("models.toml").read_text()
            origin = "dualplane/ml/model_store/models.toml"
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
    def from_settings(cls, models: ModelSettings) -> ModelRegistry:
        """The registry of ``models_config`` (or the packaged one under ``model_prefix``)."""
        return cls.load(models.models_config, model_prefix=models.model_prefix)

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
    check_rel_path(name, f"{where}: name")
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


def check_rel_path(rel: str, what: str) -> str:
    """A manifest path must stay inside the model directory (the manifest comes from S3)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise ModelError(f"{what}: invalid relative path {rel!r}")
    return rel
