"""The LangGraph adapter: the one module that knows LangGraph.

A plane builds **one** :class:`~langgraph.pregel.Pregel` graph at start-up (LangGraph's own
runtime, the one a compiled ``StateGraph`` runs on): one LangGraph node per task name (and one
for a task this process lacks), each subscribed to an input channel of its own. A batch of work
becomes **one** invocation whose input writes, to each task's channel, the list of that task's
planned nodes: every node that has work starts in the first superstep, and runs its items
concurrently (an asyncio task each), so LangGraph's lockstep supersteps never hold a fast branch
behind a slow one, and there is no per-job compile or invocation.

Why not a ``StateGraph`` with a ``Send`` per planned node, as before: a batch paid LangGraph's
per-task machinery (config patching, callback managers, retry wrappers: about 135–175 µs) for
every planned node, and a routing superstep from ``START`` (about 170 µs) for every batch;
measured with no-op nodes, a batch of 32 took 5.3 ms that way and 0.8 ms this way, a batch of
one 0.56 ms and 0.39 ms.

What a node reports travels through LangGraph's stream writer (``stream_mode="custom"``);
:meth:`BatchGraph.stream` yields it in order. Retries are not LangGraph's: a node returns
only when it is done (the executor owns attempts and backoff), so no ``RetryPolicy`` is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from langgraph.channels import EphemeralValue, Topic
from langgraph.config import get_stream_writer
from langgraph.pregel import NodeBuilder, Pregel

#: The graph node of a task this process lacks (no task can have this name).
MISSING_TASK = "dualplane.missing-task"

Write = Callable[[Any], None]
"""Sends one chunk to :meth:`BatchGraph.stream` (LangGraph's stream writer of the node)."""
RunNode = Callable[[str | None, Any, str, Write], Coroutine[Any, Any, None]]
"""Runs one planned node: (task name, or None when this process lacks it; the run; node id; writer)."""

Item = tuple[Any, str]
"""One planned node as its task's LangGraph node gets it: (the run, the node id)."""


#: What every task node writes when its items are done. Nothing reads it: it is there because a
#: superstep that updated no channel makes LangGraph's next tick look at every node for work,
#: and one that updated only this channel makes it look at none (a batch cost 10–20 µs more
#: per task the plane has).
DONE = "batch:done"


def _channel(node: str) -> str:
    return f"work:{node}"


class BatchGraph:
    """One graph for a plane's tasks.

    :param tasks: the task names this process runs.
    :param run_node: called once per planned node, in a context of its own (each planned node
        is an asyncio task of its task's LangGraph node, so what it binds to context variables
        stays its own).
    """

    def __init__(self, tasks: Iterable[str], run_node: RunNode) -> None:
        self._tasks = frozenset(tasks)
        self._run_node = run_node
        names = [*sorted(self._tasks), MISSING_TASK]
        self._graph: Pregel[Any, Any, Any, Any] = Pregel(
            nodes={name: NodeBuilder().subscribe_only(_channel(name)).do(self._node(name)).write_to(DONE)
                   for name in names},
            # EphemeralValue: a batch's items are read once, in the superstep that runs them
            channels={**{_channel(name): EphemeralValue(list) for name in names}, DONE: Topic(bool)},
            input_channels=[_channel(name) for name in names],
            output_channels=[],
            stream_mode="custom",
        )

    def _node(self, name: str) -> Callable[[list[Item]], Awaitable[bool]]:
        """The LangGraph node of task ``name``: runs every planned node of the batch that is
        this task's, each in an asyncio task; the first to raise cancels the rest (and fails
        the invocation, as a failed node of a ``StateGraph`` would)."""
        run_node = self._run_node
        task = None if name == MISSING_TASK else name

        async def node(items: list[Item]) -> bool:
            write = get_stream_writer()
            if len(items) == 1:  # most batches at low load: no task to make
                await run_node(task, items[0][0], items[0][1], write)
                return True
            async with asyncio.TaskGroup() as group:
                for run, node_id in items:
                    group.create_task(run_node(task, run, node_id, write))
            return True

        node.__name__ = f"task_{name}"
        return node

    async def stream(self, work: Sequence[tuple[str, Any, str]]) -> AsyncIterator[Any]:
        """Run every ``(task, run, node id)`` of ``work`` in one invocation; yield the chunks
        the nodes write, in order. A task this process lacks goes to :data:`MISSING_TASK`,
        whose node fails each of its items."""
        if not work:
            return
        batch: dict[str, list[Item]] = {}
        for task, run, node_id in work:
            batch.setdefault(_channel(task if task in self._tasks else MISSING_TASK), []).append((run, node_id))
        async for chunk in self._graph.astream(batch, stream_mode="custom"):
            yield chunk
