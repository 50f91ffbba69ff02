"""Hooks around a plane's work, in dramatiq's middleware style.

:class:`Hooks` has a no-op method per point of a run; a plane passes the hooks it wants
(metrics, the requirements check, task-thread set-up) to its executor and consumer, which
call them through one :class:`HookChain`: ``before_*`` hooks in order, ``after_*`` hooks in
reverse. Only :class:`NodeRefused` (from ``before_node``) propagates; any other error a hook
raises is logged and the work goes on: a metric must never fail a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualplane.common.models import Graph, Node
    from dualplane.common.registry import TaskSpec

log = logging.getLogger("dualplane.hooks")


class NodeRefused(Exception):
    """Raised by ``before_node`` to fail a node without running it (``kind`` becomes the error's type)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Hooks:
    """Every point a plane reports; each method is a no-op here. Subclass and override."""

    def init_thread(self) -> None:
        """A thread of the sync-task pool starts (before it runs any task)."""

    def before_node(self, node: Node, spec: TaskSpec) -> None:
        """A node is about to run on this process; raise :class:`NodeRefused` to fail it instead."""

    def after_attempt(self, spec: TaskSpec, outcome: str, elapsed_s: float, output: dict[str, Any] | None) -> None:
        """An attempt ended ``succeeded`` (with its ``output``), ``failed``, ``cancelled`` or ``retrying``."""

    def after_reclaim(self, count: int) -> None:
        """``count`` abandoned messages were taken over."""

    def after_dead_letter(self, lane: str) -> None:
        """A message of ``lane`` was dead-lettered."""

    def after_stale_handoff(self) -> None:
        """A handoff was rejected by the fence: another owner holds the job."""

    def after_handoff(self, target: str) -> None:
        """A job was handed to the lane ``target``."""

    def after_job_finished(self, graph: Graph, outcome: str, created_at: float | None) -> None:
        """A job finished on this plane with ``outcome``."""


class HookChain:
    """Calls the hooks of a plane: only the ones that override a method are called for it.

    :param hooks: in order; ``after_*`` methods are called in reverse.
    """

    def __init__(self, hooks: Sequence[Hooks] = ()) -> None:
        self.hooks = tuple(hooks)
        self._bound: dict[str, tuple[Callable[..., None], ...]] = {}
        for name in (n for n in vars(Hooks) if not n.startswith("_")):
            overriding = [getattr(h, name) for h in self.hooks if getattr(type(h), name) is not getattr(Hooks, name)]
            self._bound[name] = tuple(reversed(overriding) if name.startswith("after_") else overriding)

    def has(self, name: str) -> bool:
        return bool(self._bound[name])

    def before_node(self, node: Node, spec: TaskSpec) -> None:
        for hook in self._bound["before_node"]:
            try:
                hook(node, spec)
            except NodeRefused:
                raise
            except Exception:
                log.critical("hook %r failed before node %s", hook, node.id, exc_info=True)

    def emit(self, name: str, *args: Any) -> None:
        """Call every hook's ``name`` (an ``after_*`` or ``init_thread``); errors are logged."""
        for hook in self._bound[name]:
            try:
                hook(*args)
            except Exception:
                log.critical("hook %r failed", hook, exc_info=True)
