"""Job names: what a person calls a job, instead of its 32-character id.

A name lives in the graph, ``metadata.name`` (so it travels with a re-run and a duplicated
graph), and in the job hash's ``name`` field (so ``GET /jobs`` lists it without reading every
spec). A submission keeps the name it gives; otherwise it is derived: ``/compose`` names the job
after the intent's first clause or the planned song's title, ``POST /jobs`` after its first
generator node's task. A rename rewrites both, atomically.
"""

from __future__ import annotations

import re
from typing import Any

from dualplane.common.bridge import Bridge
from dualplane.common.models import Graph
from dualplane.common.registry import TaskRegistry

#: Longest name a job may have (what a row or a title shows whole).
MAX_NAME = 120
#: Longest name derived from an intent's words.
MAX_DERIVED = 60
#: Where an intent's first clause ends.
_CLAUSE_END = re.compile(r"[.;:!?\n]|,\s|\s[-–—]\s")
#: Attempts of a rename that met concurrent writes to the job hash (progress events).
_RENAME_ATTEMPTS = 20


class InvalidName(ValueError):
    """A name that is not a short printable text (HTTP 422)."""


class RenameContention(RuntimeError):
    """The job hash kept changing under a rename (HTTP 409: retry)."""


def check_name(value: Any) -> str:
    """A name as given, stripped; :class:`InvalidName` unless it is 1..120 printable characters
    (no line breaks or escapes: names are printed in terminals and tables)."""
    if not isinstance(value, str):
        raise InvalidName("a job name must be a string")
    name = value.strip()
    if not name:
        raise InvalidName("a job name must not be blank")
    if len(name) > MAX_NAME:
        raise InvalidName(f"a job name has at most {MAX_NAME} characters; this one has {len(name)}")
    if not name.isprintable():
        raise InvalidName("a job name must not contain control characters or line breaks")
    return name


def task_name(graph: Graph, registry: TaskRegistry) -> str:
    """The title of the graph's first generator node's task (the first node's when all are
    internal): what ``POST /jobs`` names a job it was given no name for."""
    specs = [registry.get(node.task) for node in graph.nodes]
    known = [spec for spec in specs if spec is not None]
    chosen = next((spec for spec in known if spec.kind != "internal"), known[0] if known else None)
    return chosen.title if chosen is not None else graph.nodes[0].task


def intent_name(text: str) -> str | None:
    """The first clause of an intent, at most :data:`MAX_DERIVED` characters (cut at a word),
    capitalised; None when there are no words."""
    words = " ".join(_CLAUSE_END.split(text.strip(), maxsplit=1)[0].split())
    words = "".join(ch for ch in words if ch.isprintable())
    if not words:
        return None
    if len(words) > MAX_DERIVED:
        head = words[:MAX_DERIVED - 1]
        words = (head.rsplit(" ", 1)[0] if " " in head else head).rstrip(",;- ") + "…"
    return words[0].upper() + words[1:]


def compose_name(intent_text: str | None, title: Any, prompt: str | None) -> str | None:
    """What ``/compose`` names a job: the intent's first clause, else the planned song's (or the
    brief's) title, else the brief's prompt's first clause (None: the submission derives one
    from the tasks)."""
    if intent_text and (name := intent_name(intent_text)):
        return name
    if isinstance(title, str):
        try:
            return check_name(title[:MAX_NAME])
        except InvalidName:
            pass  # a blank title: fall through to the prompt
    return intent_name(prompt) if prompt else None


def name_graph(graph: Graph, registry: TaskRegistry) -> str:
    """Check the graph's given ``metadata.name`` (:class:`InvalidName`) or derive one; the graph
    then carries it. Returns the name."""
    given = graph.metadata.get("name")
    name = check_name(given) if given is not None else task_name(graph, registry)
    graph.metadata["name"] = name
    return name


async def rename(bridge: Bridge, job_id: str, name: str) -> bool:
    """Set a job's name in its spec and its ``name`` field together; False when the job is gone."""
    renamed = await bridge.rename_job(job_id, name, attempts=_RENAME_ATTEMPTS)
    if renamed is None:
        raise RenameContention(f"job {job_id!r} kept changing while it was renamed; try again")
    return renamed
