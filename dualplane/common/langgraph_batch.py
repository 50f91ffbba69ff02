"""The LangGraph adapter: the one module that knows LangGraph.

A plane compiles **one** ``StateGraph`` at start-up: one LangGraph node per task name (and one
for a task this process lacks), each reached by a ``Send`` from ``START``. A batch of work
becomes **one** invocation in which every planned node of every job is a ``Send``: all of them
start in the first superstep, so LangGraph's lockstep supersteps never hold a fast branch
behind a slow one, and there is no per-job compile (0.2–0.5 ms) or invocation (0.4 ms).

What a node reports travels through LangGraph's stream writer (``stream_mode="custom"``);
:meth:`BatchGraph.stream` yields it in order. Retries are not LangGraph's: a node returns
only when it is done (the executor owns attempts and backoff), so no ``RetryPolicy`` is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

#: The graph node of a task this process lacks (no task can have this name).
MISSING_TASK = "dualplane.missing-task"

Write = Callable[[Any], None]
"""Sends one chunk to :meth:`BatchGraph.stream` (LangGraph's stream writer of the node)."""
RunNode = Callable[[str | None, Any, str, Write], Awaitable[None]]
"""Runs one planned node: (task name, or None when this process lacks it; the run; node id; writer)."""


class _BatchState(TypedDict, total=False):
    batch: int  # key of the batch's sends, kept here (LangGraph copies state)


class BatchGraph:
    """One compiled graph for a plane's tasks.

    :param tasks: the task names this process runs.
    :param run_node: called once per planned node, in the node's own LangGraph context.
    """

    def __init__(self, tasks: Iterable[str], run_node: RunNode) -> None:
        self._tasks = frozenset(tasks)
        self._run_node = run_node
        self._sends: dict[int, list[Send]] = {}
        builder = StateGraph(_BatchState)
        for name in sorted(self._tasks):
            builder.add_node(name, self._node(name))
            builder.add_edge(name, END)
        builder.add_node(MISSING_TASK, self._node(None))
        builder.add_edge(MISSING_TASK, END)
        builder.add_conditional_edges(START, self._route, [*sorted(self._tasks), MISSING_TASK])
        self._graph = builder.compile()

    def _node(self, task: str | None) -> Any:
        """The LangGraph node of ``task``: its input is a ``Send``'s argument, (run, node id), not
        the graph's state, which LangGraph's types do not foresee (hence Any)."""
        run_node = self._run_node

        async def node(item: tuple[Any, str]) -> None:
            await run_node(task, item[0], item[1], get_stream_writer())

        node.__name__ = f"task_{task}" if task is not None else MISSING_TASK
        return node

    async def _route(self, state: _BatchState) -> list[Send]:
        # async, so LangGraph does not hop to a thread to call it
        return self._sends.pop(state["batch"])

    async def stream(self, work: Sequence[tuple[str, Any, str]]) -> AsyncIterator[Any]:
        """Run every ``(task, run, node id)`` of ``work`` in one invocation; yield the chunks
        the nodes write, in order. A task this process lacks goes to :data:`MISSING_TASK`
        (LangGraph would drop a ``Send`` to a node it does not have, and the run would wait
        forever)."""
        if not work:
            return
        sends = [Send(task if task in self._tasks else MISSING_TASK, (run, node_id)) for task, run, node_id in work]
        key = id(sends)
        self._sends[key] = sends
        try:
            async for chunk in self._graph.astream({"batch": key}, stream_mode="custom"):
                yield chunk
        finally:
            self._sends.pop(key, None)
