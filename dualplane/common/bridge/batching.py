"""Script calls: the one place a call becomes Lua arguments, and the batcher that sends them.

Writes that mirror state go through :class:`Batcher`: every script call made in the same
event-loop tick is sent in one pipeline, and pipelines are sent one at a time, so per-job order
is kept while thousands of jobs share round trips. The scripts are in ``dualplane/common/lua/``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from dualplane.common.bridge.keys import node_field
from dualplane.common.bridge.translation import translated
from dualplane.common.errors import BridgeClosed
from dualplane.common.job_state import Mutation
from dualplane.common.statuses import FINISHED

SCRIPT_NAMES = ("create", "emit", "handoff", "claim", "dead_letter", "requeue", "replay", "external",
                "login_admit")


@dataclass(eq=False)
class Call:
    """One script call waiting for the next pipeline: its keys, the script's own leading
    arguments (``head``) and, for the scripts that write a job, the :class:`Mutation`.

    :meth:`argv` is the one place a call becomes script arguments. Mirroring scripts share
    the layout after ``head`` — the number of field pairs, the pairs (node states as
    ``n:<id>``, then job fields), then (kind, body) event pairs: ``set_fields`` and
    ``append_events`` in ``_events.lua`` read it — which is what lets consecutive calls for
    the same job and fence merge into one.
    """

    script: str
    keys: Sequence[str]
    head: Sequence[Any]
    change: Mutation | None = None
    merge_key: tuple[str, Any] | None = None
    futures: list[asyncio.Future[Any]] = field(default_factory=list)

    def argv(self) -> list[Any]:
        change = self.change
        if change is None:
            return [len(self.keys), *self.keys, *self.head]
        pairs = [part for node_id, state in change.nodes.items() for part in (node_field(node_id), state)]
        pairs += [part for item in change.fields.items() for part in item]
        return [len(self.keys), *self.keys, *self.head, len(pairs) // 2, *pairs,
                *(part for event in change.events for part in event)]

    def absorb(self, earlier: Call) -> None:
        """Take over an earlier emit of the same job and fence: its change goes first, and
        its callers get this call's result (the same atomic step)."""
        self.change = earlier.change.then(self.change) if earlier.change and self.change else self.change
        self.futures = earlier.futures + self.futures


async def round_trip(pool: aioredis.ConnectionPool, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``commands`` in one write on a pooled connection, and their raw replies in order (an error
    reply is that command's result). A pipeline in all but name: redis-py's own pipeline object
    and ``execute_command`` cost about a third more CPU a round trip (per-command bookkeeping,
    response callbacks, the retry wrapper), and the batcher's scripts and the hot reads pay one
    each. A connection that fails mid-way is closed, never reused with replies still owed on it."""
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        return await send_and_read(connection, commands)
    finally:
        await pool.release(connection)


async def send_and_read(connection: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``commands`` in one write on ``connection`` and their raw replies in order (an error reply
    is that command's result); a connection that fails mid-way is closed."""
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        # one deadline (the socket timeout) for all the replies: redis-py arms a timer for each
        # read otherwise, two or three a job on the dispatch path
        async with asyncio.timeout(connection.socket_timeout):
            for _ in commands:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:  # that command's error; the replies after it still come
                    replies.append(exc)
        return replies
    except TimeoutError as exc:
        await connection.disconnect()
        raise redis.TimeoutError(f"no reply from Redis within {connection.socket_timeout} s") from exc
    except BaseException:
        await connection.disconnect()
        raise


def finished_table() -> str:
    """The Lua table of the finished job statuses, written from :data:`~dualplane.common.statuses.FINISHED`
    at the head of every script, so the scripts never spell the set themselves."""
    entries = ", ".join(f"[{json.dumps(status)}] = true" for status in sorted(FINISHED))
    return f"local FINISHED = {{{entries}}}\n"


class Scripts:
    """The Lua sources (each prefixed with the finished statuses, the topology's ``SHARDED`` flag
    and the shared ``_events.lua``) and their digests, known without Redis: a plane starts while
    Redis is down, and a script Redis does not hold yet is sent once with EVAL (NOSCRIPT).

    :param sharded: publish events on each job's sharded channel (a cluster) rather than the
        per-kind channels of one Redis (see ``_events.lua``)."""

    def __init__(self, names: Sequence[str] = SCRIPT_NAMES, *, sharded: bool = False) -> None:
        folder = resources.files("dualplane.common") / "lua"
        shared = (finished_table() + f"local SHARDED = {'true' if sharded else 'false'}\n"
                  + (folder / "_events.lua").read_text())
        self.sources = {name: shared + "\n" + (folder / f"{name}.lua").read_text() for name in names}
        self.shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self.sources.items()}


class Batcher:
    """Coalesces script calls made in the same loop tick into one pipeline.

    Only one pipeline is in flight at a time: Redis runs them in order, which is
    what keeps a job's events, its handoff and its ack in the order they were made.
    A mirroring call that directly follows an ``emit`` for the same job and fence is
    merged with it (a node's "running" and "succeeded" and the job's handoff become
    one script call when they happen in the same tick).
    """

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, scripts: Scripts, *,
                 send: Callable[[Sequence[tuple[Any, Sequence[Any]]]], Awaitable[list[Any]]]) -> None:
        self._client = client
        self._scripts = scripts
        #: sends (key, command) pairs in one round trip (per node on a cluster): BridgeCore's
        self._send_keyed = send
        self._pending: list[Call] = []
        self.flusher: asyncio.Task[None] | None = None

    def call(self, call: Call) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call.futures.append(future)
        last = self._pending[-1] if self._pending else None
        if (last is not None and call.merge_key is not None and last.script == "emit"
                and last.merge_key == call.merge_key):
            call.absorb(last)
            self._pending[-1] = call
        else:
            self._pending.append(call)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush_all())
        return future

    async def _flush_all(self) -> None:
        await asyncio.sleep(0)  # let the rest of this tick's callers join the batch
        while self._pending:
            batch, self._pending = self._pending, []
            await asyncio.shield(self._flush(batch))

    async def _flush(self, batch: list[Call]) -> None:
        argvs = [call.argv() for call in batch]
        try:
            results = await self._send(batch, argvs)
        except Exception as exc:  # connection lost: every caller in the batch sees it
            closed = BridgeClosed(f"redis pipeline failed: {exc}")
            closed.__cause__ = exc
            results = [closed] * len(batch)
        for call, argv, result in zip(batch, argvs, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted and lost its script cache
                result = await self._retry_eval(call.script, argv)
            for future in call.futures:
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(_dualplane_error(result))
                else:
                    future.set_result(result)

    async def _send(self, batch: list[Call], argvs: list[list[Any]]) -> list[Any]:
        return await self._send_keyed([
            (call.keys[0], ("EVALSHA", self._scripts.shas[call.script], *argv))
            for call, argv in zip(batch, argvs, strict=True)])

    async def _retry_eval(self, script: str, argv: Sequence[Any]) -> Any:
        try:
            return await self._client.eval(self._scripts.sources[script], *argv)
        except Exception as exc:  # handed to the callers as their result
            return exc


def _dualplane_error(exc: Exception) -> Exception:
    if not isinstance(exc, redis.RedisError):
        return exc
    error = translated(exc)
    error.__cause__ = exc
    return error
