"""Tasks and the registry each plane builds from task modules.

A task is a function ``(ctx, params) -> dict`` decorated with :func:`task`. The
decorator only attaches a :class:`TaskSpec`; registries are built explicitly
from modules (:meth:`TaskRegistry.from_modules`), so there is no global table.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from dualplane.common.retry import Retry

TaskFn = Callable[..., Any]

#: What tasks make, in the order a UI groups them; ``internal``: not offered as a generator.
TASK_KINDS = ("music", "voice", "video", "training", "planning", "media", "internal")

#: Retry policy of a task that declares none: three attempts on transient errors.
DEFAULT_RETRY = Retry()


@dataclass(frozen=True)
class TaskSpec:
    """What the planes know about a task.

    :param name: registry name used in graphs.
    :param plane: ``control`` or ``python``.
    :param fn: the function; async functions run on the event loop, sync ones in a thread.
    :param params: pydantic model of the params (validated at submission and before each run).
    :param gpu: whether the task wants a CUDA device.
    :param retry: retry policy (attempts, backoff, which errors are transient).
    :param timeout_s: default wall-clock limit of one attempt; None for no limit.
    :param description: first line of the function's docstring.
    :param kind: what a user makes with it (music, voice, video, training, planning, media), or
        ``internal`` for tasks that exist for tests, benchmarks and plumbing: a UI offers only
        the others as generators.
    :param title: a human name for it ("Compose an arrangement"); the task name when empty.
    """

    name: str
    plane: str
    fn: TaskFn
    params: type[BaseModel]
    gpu: bool = False
    retry: Retry = field(default=DEFAULT_RETRY)
    timeout_s: float | None = None
    description: str = ""
    kind: str = "internal"
    title: str = ""

    @functools.cached_property
    def is_async(self) -> bool:  # asked for every node run: inspect's answer costs 1.5 µs
        return inspect.iscoroutinefunction(self.fn)


def task(
    name: str,
    *,
    plane: str,
    params: type[BaseModel],
    gpu: bool = False,
    retry: Retry = DEFAULT_RETRY,
    timeout_s: float | None = None,
    kind: str = "internal",
    title: str = "",
) -> Callable[[TaskFn], TaskFn]:
    """Declare a task. The function is returned unchanged, with ``__task_spec__`` set."""
    assert plane in ("control", "python"), plane
    assert kind in TASK_KINDS, kind

    def decorate(fn: TaskFn) -> TaskFn:
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        fn.__task_spec__ = TaskSpec(  # type: ignore[attr-defined]
            name=name, plane=plane, fn=fn, params=params, gpu=gpu, retry=retry,
            timeout_s=timeout_s, description=doc[0] if doc else "", kind=kind, title=title or name,
        )
        return fn

    return decorate


class TaskRegistry:
    """Name → :class:`TaskSpec`. Both planes hold the full catalog (for validation);
    each runs only the tasks of its own plane."""

    def __init__(self, specs: Iterable[TaskSpec] = ()) -> None:
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add(spec)

    @classmethod
    def from_modules(cls, modules: Iterable[ModuleType]) -> TaskRegistry:
        specs = [
            obj.__task_spec__
            for module in modules
            for obj in vars(module).values()
            if callable(obj) and hasattr(obj, "__task_spec__")
        ]
        return cls(specs)

    def add(self, spec: TaskSpec) -> None:
        if spec.name in self._specs and self._specs[spec.name] is not spec:
            raise ValueError(f"task {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> TaskSpec | None:
        return self._specs.get(name)

    def for_plane(self, plane: str) -> list[TaskSpec]:
        return [spec for spec in self._specs.values() if spec.plane == plane]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)
