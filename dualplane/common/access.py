"""Which object keys a job may read on its user's behalf.

A key a task reads for a job must be the job's user's own — one of their uploads
(``uploads/<user>/…``) or an artifact of one of their jobs (``jobs/<job>/…``) — or under a
public prefix (``models/``). Anything else fails exactly like a missing key
(:class:`~dualplane.common.errors.ObjectNotFound`), so the answer never tells whether another
user's object exists. Keys written literally in a graph are checked at submission as well,
where the same rules give a node-scoped error before anything runs.

Jobs without a user are submitted in process (benchmarks, tests, the planes themselves):
the HTTP API always sets the user, and only those jobs are held to these rules.

Params that hold keys are declared with :data:`ObjectKey` (a key) or :data:`InputRef` (a key
or an http(s) URL, fetched under :mod:`dualplane.common.inputs`' address rules).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, Field

from dualplane.common.errors import ObjectNotFound, UnknownJob

#: Keys everyone's jobs may read: model weights.
PUBLIC_PREFIXES = ("models/",)
_KEY_FORMATS = ("object-key", "object-key-or-url")

ObjectKey = Annotated[str, Field(min_length=1, max_length=1024, json_schema_extra={"format": "object-key"})]
InputRef = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"format": "object-key-or-url"})]

#: ``async (job_id) -> owner`` of an existing job; raises :class:`UnknownJob` when there is none.
JobOwner = Callable[[str], Awaitable[str | None]]


def _well_formed(key: str) -> bool:
    segments = key.split("/")
    return all(s and s != ".." and s != "." and "\\" not in s and s.isprintable() for s in segments)


async def may_read(key: str, *, user: str | None, job_id: str | None, job_owner: JobOwner) -> bool:
    """Whether a job of ``user`` (``job_id``, or None before it exists) may read ``key``."""
    if user is None:
        return True
    if not _well_formed(key):
        return False
    if key.startswith(PUBLIC_PREFIXES):
        return True
    parts = key.split("/", 2)
    if len(parts) < 3:
        return False
    area, owner, _ = parts
    if area == "uploads":
        return owner == user
    if area == "jobs":
        if owner == job_id:
            return True
        try:
            return await job_owner(owner) == user
        except UnknownJob:
            return False
    return False


async def check_read(key: str, *, user: str | None, job_id: str | None, job_owner: JobOwner) -> None:
    """Raise :class:`ObjectNotFound` unless the job may read ``key`` (see :func:`may_read`)."""
    if not await may_read(key, user=user, job_id=job_id, job_owner=job_owner):
        raise ObjectNotFound(key)


@functools.cache
def key_fields(params: type[BaseModel]) -> dict[str, bool]:
    """The params fields that hold object keys: name → whether it is a list of them."""
    found: dict[str, bool] = {}
    for name, prop in params.model_json_schema().get("properties", {}).items():
        for option in [prop, *prop.get("anyOf", ())]:
            if option.get("format") in _KEY_FORMATS:
                found[name] = False
            elif option.get("type") == "array" and option.get("items", {}).get("format") in _KEY_FORMATS:
                found[name] = True
    return found


def literal_keys(params: type[BaseModel], values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(field path, key)`` of every object key written literally in a node's params (not a
    ``$ref``, not a URL: those are checked where they are resolved or fetched)."""
    for name, is_list in key_fields(params).items():
        value = values.get(name)
        items = list(enumerate(value)) if is_list and isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, str) and not item.startswith(("http://", "https://")):
                yield (name if index is None else f"{name}.{index}"), item
