"""The Redis bridge: the only module that spells keys, streams, groups and channels.

Key layout under the configurable prefix ``P`` (default ``dp:``):

============================  ===========================================================
``P job:<id>``                hash: job fields, ``spec`` (graph JSON as submitted) and one
                              ``n:<node>`` field per node with its runtime state (JSON);
                              ``x:<node>``: an external node's claim (token, lease deadline)
``P job:<id>:events``         stream of events; entry id ``<seq>-0``, field ``e`` (JSON)
``P status|progress|data:<id>``  Pub/Sub channels, a wake-up copy of each event
``P cancels``                 Pub/Sub channel: the id of each job whose cancel was requested
``P stream:control``          control-plane stream, group ``control``
``P stream:data:<pool>``      data-plane stream of a worker pool, group ``workers``
``P stream:dead``             dead-letter stream (reason, source stream and id, fields)
``P stream:audit``            requests the content policy refused (user, rule, node, detail; capped)
``P jobs:active``             sorted set of unfinished jobs (by created_at): the reconciler's list
``P instance``                a marker set at start-up: when it is gone, Redis lost its data
``P worker:<id>``             capability manifest of a live worker (TTL)
``P account:<name>``          hash: an account (role, argon2id hash, disabled, gen, times)
``P accounts``                set of account names
``P auth:markers``            hash: name -> ``"<gen> <disabled>"`` of accounts whose tokens
                              may be revoked; ``P auth:markers:version`` counts its changes
``P refresh:<session>``       hash: a refresh session (user, gen, hash of its current token; TTL)
``P refresh-of:<name>``       sorted set of an account's refresh sessions by expiry
``P login-fail:user|ip:<x>``  sorted set of an account's or address's recent failed logins
============================  ===========================================================

Writes that mirror state go through :class:`_Batcher`: every script call made in
the same event-loop tick is sent in one pipeline, and pipelines are sent one at a
time, so per-job order is kept while thousands of jobs share round trips.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Self

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, NoScriptError, ResponseError

from dualplane.common.errors import BridgeClosed, UnknownJob
from dualplane.common.graph import EXTERNAL_LANE
from dualplane.common.job_state import Mutation, dead_lettered
from dualplane.common.models import BridgeConfig, Event, Graph, Handoff, Job
from dualplane.common.statuses import FINISHED
from dualplane.common.wire import EVENT_FIELD, event_body, is_final_event, stream_id

log = logging.getLogger("dualplane.bridge")

CONTROL_GROUP = "control"
#: Refusals the audit stream keeps (about: it is trimmed with MAXLEN ~).
AUDIT_MAXLEN = 10_000
#: Longest single blocking read: well under redis-py's default 5 s socket timeout.
MAX_BLOCK_MS = 2000
WORKER_GROUP = "workers"
#: Prefix of the job-hash field that holds a node's runtime state (``n:<id>``).
_NODE_FIELD = "n:"
_LUA_NAMES = ("create", "emit", "handoff", "claim", "dead_letter", "requeue", "replay", "external")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass(frozen=True)
class Message:
    """One stream entry delivered to a consumer."""

    stream: str
    id: str
    fields: dict[bytes, bytes]

    @property
    def raw(self) -> bytes | None:
        return self.fields.get(b"m")


@dataclass(frozen=True)
class Claim:
    """What the job hash says when a handoff arrives: ``ok`` false means stale or gone.
    ``fence`` is the claimant's ownership token: every write it makes is checked against it."""

    ok: bool
    gone: bool = False
    status: str = ""
    cancel_requested: bool = False
    node_states: dict[str, dict[str, Any]] | None = None
    created_at: float | None = None
    user: str | None = None
    fence: int = 0


#: A pooled connection idle longer than this is PINGed before its next command.
IDLE_CHECK_S = 1.0


class _CheckedConnection(aioredis.Connection):
    """A pooled connection that finds out it went stale (Redis restarted, a failover) before it
    sends a command, and reconnects once: without it, every connection idle in the pool fails
    one request after a restart. Only the PING is repeated, never a command: a command that
    fails half-way may have run, and most of ours must not run twice."""

    _ping_retry = Retry(NoBackoff(), 1)

    async def check_health(self) -> None:
        if self.health_check_interval and asyncio.get_running_loop().time() > self.next_health_check:
            await self._ping_retry.call_with_retry(self._send_ping, self._ping_failed, with_failure_count=True)


class _WaitingPool(aioredis.ConnectionPool):
    """redis-py's pool, waiting up to ``wait_timeout_s`` for a free connection where it would
    raise at ``max_connections``. (``BlockingConnectionPool`` waits too, but takes a Condition
    and arms a timer for every command, which cost the dispatch path about 8 %.)"""

    def __init__(self, *, wait_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait_timeout_s = wait_timeout_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except MaxConnectionsError:
            pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_timeout_s
        while (remaining := deadline - loop.time()) > 0:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                break
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                continue
        raise redis.ConnectionError(f"no Redis connection free within {self._wait_timeout_s} s "
                                    f"({self.max_connections} in use)")

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Keys:
    """Key, stream and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.control_stream = f"{prefix}stream:control"
        self.dead_stream = f"{prefix}stream:dead"
        self.audit_stream = f"{prefix}stream:audit"
        self.jobs_index = f"{prefix}jobs"
        self.active_jobs = f"{prefix}jobs:active"
        self.instance = f"{prefix}instance"
        self.cancels_channel = f"{prefix}cancels"
        self.accounts = f"{prefix}accounts"
        self.auth_markers = f"{prefix}auth:markers"
        self.auth_markers_version = f"{prefix}auth:markers:version"

    def user_jobs(self, user: str) -> str:
        return f"{self.prefix}jobs:user:{user}"

    def preferences(self, user: str) -> str:
        return f"{self.prefix}prefs:{user}"

    def rate(self, user: str, window: int) -> str:
        return f"{self.prefix}rate:{user}:{window}"

    def workers_pattern(self) -> str:
        return f"{self.prefix}worker:*"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def channel_pattern(self, kind: str) -> str:
        """PSUBSCRIBE pattern for one kind of event of every job (one subscription per hub)."""
        return f"{self.prefix}{kind}:*"

    @staticmethod
    def job_id_of_channel(channel: str) -> str:
        """Job ids contain no ':' (graph.schema.json), so the id is the last segment."""
        return channel.rsplit(":", 1)[1]

    def data_stream(self, pool: str) -> str:
        return f"{self.prefix}stream:data:{pool}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def stream_for_lane(self, lane: str) -> str:
        """``control`` → the control stream; ``python:<pool>`` → that pool's data stream."""
        if lane == "control":
            return self.control_stream
        return self.data_stream(lane.split(":", 1)[1])

    def group_for_stream(self, stream: str) -> str:
        return CONTROL_GROUP if stream == self.control_stream else WORKER_GROUP

    # -- accounts (control_plane/accounts.py, login_limit.py) ---------------------------

    def account(self, name: str) -> str:
        return f"{self.prefix}account:{name}"

    def refresh_session(self, session_id: str) -> str:
        return f"{self.prefix}refresh:{session_id}"

    def refresh_sessions(self, name: str) -> str:
        return f"{self.prefix}refresh-of:{name}"

    def login_failures(self, kind: str, who: str) -> str:
        return f"{self.prefix}login-fail:{kind}:{who}"


@dataclass(eq=False)
class _Call:
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
        pairs = [part for node_id, state in change.nodes.items() for part in (_NODE_FIELD + node_id, state)]
        pairs += [part for item in change.fields.items() for part in item]
        return [len(self.keys), *self.keys, *self.head, len(pairs) // 2, *pairs,
                *(part for event in change.events for part in event)]

    def absorb(self, earlier: _Call) -> None:
        """Take over an earlier emit of the same job and fence: its change goes first, and
        its callers get this call's result (the same atomic step)."""
        self.change = earlier.change.then(self.change) if earlier.change and self.change else self.change
        self.futures = earlier.futures + self.futures


class _Batcher:
    """Coalesces script calls made in the same loop tick into one pipeline.

    Only one pipeline is in flight at a time: Redis runs them in order, which is
    what keeps a job's events, its handoff and its ack in the order they were made.
    A mirroring call that directly follows an ``emit`` for the same job and fence is
    merged with it (a node's "running" and "succeeded" and the job's handoff become
    one script call when they happen in the same tick).
    """

    def __init__(self, client: aioredis.Redis, shas: dict[str, str], sources: dict[str, str]) -> None:
        self._client = client
        self._shas = shas
        self._sources = sources
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    def call(self, call: _Call) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call.futures.append(future)
        last = self._pending[-1] if self._pending else None
        if (last is not None and call.merge_key is not None and last.script == "emit"
                and last.merge_key == call.merge_key):
            call.absorb(last)
            self._pending[-1] = call
        else:
            self._pending.append(call)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        return future

    async def _flush_all(self) -> None:
        await asyncio.sleep(0)  # let the rest of this tick's callers join the batch
        while self._pending:
            batch, self._pending = self._pending, []
            await asyncio.shield(self._flush(batch))

    async def _flush(self, batch: list[_Call]) -> None:
        argvs = [call.argv() for call in batch]
        try:
            pipe = self._client.pipeline(transaction=False)
            for call, argv in zip(batch, argvs, strict=True):
                pipe.evalsha(self._shas[call.script], *argv)
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # connection lost: every caller in the batch sees it
            results = [BridgeClosed(f"redis pipeline failed: {exc}")] * len(batch)
        for call, argv, result in zip(batch, argvs, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted and lost its script cache
                result = await self._retry_eval(call.script, argv)
            for future in call.futures:
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _retry_eval(self, script: str, argv: Sequence[Any]) -> Any:
        try:
            return await self._client.eval(self._sources[script], *argv)
        except Exception as exc:  # handed to the callers as their result
            return exc


def _load_lua() -> dict[str, str]:
    folder = resources.files("dualplane.common") / "lua"
    shared = (folder / "_events.lua").read_text()
    return {name: shared + "\n" + (folder / f"{name}.lua").read_text() for name in _LUA_NAMES}


class Bridge:
    """Everything the planes do with Redis.

    :param config: validated bridge configuration (see ``bridge_config.schema.json``).
    :param client: an existing asyncio client (tests); one is created from the URL otherwise.
    """

    def __init__(self, config: BridgeConfig, *, client: aioredis.Redis | None = None) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix)
        self.lease_ms = int(config.lease_s * 1000)
        self.heartbeat_s = config.heartbeat_s or config.lease_s / 3
        self._client = client
        self._owns_client = client is None
        self._sources = _load_lua()
        self._shas: dict[str, str] = {}
        self._batcher: _Batcher | None = None
        self._state = _State.NEW

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> Self:
        if self._state is _State.OPEN:
            return self
        if self._state is _State.CLOSED:
            raise BridgeClosed("bridge was closed")
        if self._client is None:
            # a burst past max_connections waits (bounded) for a connection instead of failing
            # at once, and a wait that runs out is a clean "unavailable"
            pool = _WaitingPool.from_url(
                self.config.redis_url, max_connections=self.config.max_connections,
                wait_timeout_s=self.config.pool_timeout_s, connection_class=_CheckedConnection,
                health_check_interval=IDLE_CHECK_S)
            self._client = aioredis.Redis(connection_pool=pool, decode_responses=False)
        # the digests are known without Redis, so a plane starts while Redis is down (and says
        # so on /health); a script Redis does not hold yet is sent once with EVAL (NOSCRIPT)
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self._sources.items()}
        with contextlib.suppress(redis.RedisError):
            for source in self._sources.values():
                await self._client.script_load(source)
        self._batcher = _Batcher(self._client, self._shas, self._sources)
        self._state = _State.OPEN
        return self

    async def close(self) -> None:
        if self._state is _State.OPEN and self._batcher and self._batcher._flusher:
            await asyncio.gather(self._batcher._flusher, return_exceptions=True)
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self._state = _State.CLOSED

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def client(self) -> Any:
        """The raw redis-py client. Typed ``Any`` on purpose: redis-py 8 types every reply as
        ``bytes | str`` (and some as ``Awaitable | value``) whatever ``decode_responses`` says;
        this client never decodes, and the bridge's own methods give the typed answers."""
        if self._state is not _State.OPEN or self._client is None:
            raise BridgeClosed(f"bridge is {self._state.value}")
        return self._client

    def _call(self, call: _Call) -> asyncio.Future[Any]:
        if self._state is not _State.OPEN or self._batcher is None:
            raise BridgeClosed(f"bridge is {self._state.value}")
        return self._batcher.call(call)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except redis.RedisError:
            return False

    # -- streams -----------------------------------------------------------------------

    async def ensure_group(self, stream: str) -> None:
        """Create the stream's consumer group (and the stream) if missing."""
        try:
            await self.client.xgroup_create(stream, self.keys.group_for_stream(stream), id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, stream: str, consumer: str, *, count: int, block_ms: int | None) -> list[Message]:
        """New messages for this consumer (XREADGROUP ``>``). A group that vanished (Redis
        restarted empty, a failover to an empty replica, a FLUSHALL) is created again."""
        try:
            reply = await self.client.xreadgroup(
                self.keys.group_for_stream(stream), consumer, {stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise BridgeClosed(f"read from {stream} failed: {exc}") from exc
            await self._recreate_group(stream)
            return []
        except redis.RedisError as exc:
            raise BridgeClosed(f"read from {stream} failed: {exc}") from exc
        return [Message(stream, _s(mid), fields) for _, entries in reply or [] for mid, fields in entries]

    async def _recreate_group(self, stream: str) -> None:
        log.error("consumer group of %s is missing (Redis lost its data?); creating it again", stream)
        try:
            await self.ensure_group(stream)
        except redis.RedisError as exc:
            raise BridgeClosed(f"cannot create the group of {stream}: {exc}") from exc

    async def reclaim(self, stream: str, consumer: str, *, count: int) -> tuple[list[Message], dict[str, int]]:
        """Take over messages idle longer than the lease (a dead consumer's), with their
        delivery counts. Entries deleted from the stream meanwhile are acknowledged."""
        group = self.keys.group_for_stream(stream)
        try:
            reply = await self.client.xautoclaim(stream, group, consumer, self.lease_ms, "0-0", count=count)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await self._recreate_group(stream)
            return [], {}
        _, entries, *rest = reply  # Redis 6.2 replies with 2 elements, 7.x with 3
        deleted = rest[0] if rest else []
        if deleted:
            await self.client.xack(stream, group, *deleted)
        messages = [Message(stream, _s(mid), fields) for mid, fields in entries if fields is not None]
        return messages, await self.delivery_counts(stream, [m.id for m in messages])

    async def delivery_counts(self, stream: str, ids: Iterable[str]) -> dict[str, int]:
        group = self.keys.group_for_stream(stream)
        pipe = self.client.pipeline(transaction=False)
        ids = list(ids)
        for mid in ids:
            pipe.xpending_range(stream, group, min=mid, max=mid, count=1)
        counts: dict[str, int] = {}
        for mid, rows in zip(ids, await pipe.execute(), strict=True):
            counts[mid] = int(rows[0]["times_delivered"]) if rows else 0
        return counts

    async def release(self, stream: str, consumer: str, ids: Sequence[str]) -> None:
        """Give messages back so another consumer reclaims them at once (graceful shutdown):
        they stay pending, with an idle time already past the lease."""
        if ids:
            group = self.keys.group_for_stream(stream)
            await self.client.xclaim(stream, group, consumer, 0, list(ids), idle=self.lease_ms + 1, justid=True)

    async def ack(self, stream: str, ids: Sequence[str]) -> None:
        """Acknowledge and delete (see handoff.lua: acked entries are never read again)."""
        if ids:
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(stream, self.keys.group_for_stream(stream), *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()

    async def dead_letter(self, message: Message, reason: str, job_id: str | None = None) -> None:
        """Park a message with its reason; fail its job, if known, so nobody waits on it."""
        job_id = job_id or ""
        # a poison message may hold bytes that are not UTF-8: kept readable, never a crash
        fields = {_lenient(k): _lenient(v) for k, v in message.fields.items()}
        await self._call(_Call(
            "dead_letter",
            [self.keys.dead_stream, message.stream, self.keys.job(job_id), self.keys.events(job_id),
             self.keys.active_jobs],
            [self.keys.prefix, job_id, time.time(), self.keys.group_for_stream(message.stream), message.id,
             reason, _dumps(fields), self.config.finished_job_ttl_s],
            dead_lettered(job_id, reason),
        ))

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        entries = await self.client.xrange(self.keys.dead_stream, count=count)
        return [{_s(k): _s(v) for k, v in fields.items()} | {"entry": _s(mid)} for mid, fields in entries]

    async def dead_letter_page(self, *, count: int, before: str | None = None) -> list[dict[str, str]]:
        """Dead letters newest first, older than the entry id ``before`` when given."""
        return await self._newest_first(self.keys.dead_stream, count=count, before=before)

    async def dead_letter_entry(self, entry_id: str) -> dict[str, str] | None:
        """One dead letter (its fields and ``entry``), None when there is none with that id."""
        rows = await self.client.xrange(self.keys.dead_stream, entry_id, entry_id, count=1)
        return {_s(k): _s(v) for k, v in rows[0][1].items()} | {"entry": _s(rows[0][0])} if rows else None

    async def discard_dead_letter(self, entry_id: str) -> bool:
        """Delete a dead letter; False when there was none with that id."""
        return bool(await self.client.xdel(self.keys.dead_stream, entry_id))

    async def replay_dead_letter(self, entry_id: str) -> tuple[str, str | None]:
        """Put a dead letter's message back on its source stream and make its job runnable again,
        undoing what dead-lettering did (``replay.lua``, one atomic step that also drops the dead
        letter). Returns ``("replayed", new entry id)``, or why not and None: ``gone`` (no such
        dead letter: replayed or discarded already), ``job-gone``, ``not-failed-by-it``, ``moved``.
        A message whose job is known is replayed with the job's next handoff_seq; one that is
        still poison is dead-lettered again by the consumer that reads it."""
        entry = await self.dead_letter_entry(entry_id)
        if entry is None:
            return "gone", None
        stream, job_id = entry.get("stream", ""), entry.get("job", "")
        if not stream.startswith(f"{self.keys.prefix}stream:") or stream in (self.keys.dead_stream,
                                                                            self.keys.audit_stream):
            return "not-replayable", None
        message = orjson.loads(entry.get("fields") or "{}")
        handoff_seq = ""
        if job_id:
            (current,) = await self.client.hmget(self.keys.job(job_id), ["handoff_seq"])
            if current is None:
                return "job-gone", None
            handoff_seq = _s(current)
            message["m"] = _with_handoff_seq(message.get("m"), job_id, int(handoff_seq) + 1)
        owner = "control" if stream == self.keys.control_stream else "python"
        _, event = event_body("status", job_id, status="queued", message=f"replayed from dead letter {entry_id}",
                              plane="control")
        pairs = [part for item in message.items() for part in item]
        code, value = await self._call(_Call(
            "replay",
            [self.keys.dead_stream, stream, self.keys.job(job_id), self.keys.events(job_id), self.keys.active_jobs],
            [self.keys.prefix, job_id, time.time(), entry_id, handoff_seq, owner, event, len(message), *pairs],
        ))
        return ("replayed", _s(value)) if int(code) == 1 else (_s(value), None)

    async def record_refusal(self, fields: dict[str, Any], *, maxlen: int = AUDIT_MAXLEN) -> str:
        """Append a refused request to the audit stream (capped near ``maxlen``: the oldest go)."""
        values = {k: str(v) for k, v in fields.items() if v is not None}
        return _s(await self.client.xadd(self.keys.audit_stream, values, maxlen=maxlen, approximate=True))

    async def audit_page(self, *, count: int, before: str | None = None) -> list[dict[str, str]]:
        """Refusals newest first, older than the entry id ``before`` when given."""
        return await self._newest_first(self.keys.audit_stream, count=count, before=before)

    async def _newest_first(self, stream: str, *, count: int, before: str | None) -> list[dict[str, str]]:
        entries = await self.client.xrevrange(stream, max=f"({before}" if before else "+", min="-", count=count)
        return [{_s(k): _s(v) for k, v in fields.items()} | {"entry": _s(mid)} for mid, fields in entries]

    async def pending_count(self, stream: str) -> int:
        try:
            info = await self.client.xpending(stream, self.keys.group_for_stream(stream))
        except ResponseError:
            return 0
        return int(info["pending"])

    async def stream_length(self, stream: str) -> int:
        return int(await self.client.xlen(stream))

    # -- job state ---------------------------------------------------------------------

    async def create_job(
        self,
        job_id: str,
        graph: Graph,
        change: Mutation,
        *,
        lane: str,
        request_id: str | None,
        user: str | None = None,
    ) -> tuple[bool, str | int]:
        """Store a new job (``change``: what :func:`~dualplane.common.job_state.submit` made of it)
        with its graph as ``spec``, and hand it to ``lane``. Returns ``(created, seq)`` or, for an
        id that already exists, ``(False, its status)``."""
        message = Handoff(job_id=job_id, handoff_seq=1, graph=graph, request_id=request_id, sent_by="submit")
        change.fields["spec"] = graph.model_dump_json(exclude_defaults=True)
        index = self.keys.jobs_index
        reply = await self._call(_Call(
            "create",
            [self.keys.job(job_id), self.keys.events(job_id), self.keys.stream_for_lane(lane), index,
             self.keys.user_jobs(user) if user else index, self.keys.active_jobs],
            [self.keys.prefix, job_id, time.time(), message.model_dump_json(exclude_defaults=True)],
            change,
        ))
        created, value = int(reply[0]), reply[1]
        return created == 1, (int(value) if created else _s(value))

    async def claim(self, job_id: str, handoff_seq: int) -> Claim:
        return parse_claim(await self.claim_nowait(job_id, handoff_seq))

    def claim_nowait(self, job_id: str, handoff_seq: int) -> asyncio.Future[Any]:
        """The raw claim reply, batched with this tick's other calls (see :func:`parse_claim`);
        gathering these futures costs no task per message."""
        return self._call(_Call("claim", [self.keys.job(job_id)], [handoff_seq]))

    async def emit(self, job_id: str, change: Mutation, *, fence: int | None = None) -> int:
        """Write a change of a job (node states, fields, events) in one atomic step. ``fence``
        is the caller's ownership token (from its claim); a stale owner gets -1 and changes nothing."""
        return int(await self.emit_nowait(job_id, change, fence=fence))

    def emit_nowait(self, job_id: str, change: Mutation, *, fence: int | None = None) -> asyncio.Future[Any]:
        """:meth:`emit` without waiting: queued in this tick's pipeline, in call order."""
        return self._call(_Call(
            "emit",
            [self.keys.job(job_id), self.keys.events(job_id)],
            [self.keys.prefix, job_id, "" if fence is None else fence, time.time()],
            change, merge_key=(job_id, fence),
        ))

    async def handoff(self, job_id: str, **kwargs: Any) -> int:
        """Hand the full graph to ``target_lane`` (or finish the job when it is None) and
        acknowledge ``source``, atomically. Returns the last seq, -1 if stale, -2 if gone."""
        return int(await self.handoff_nowait(job_id, **kwargs))

    def handoff_nowait(
        self,
        job_id: str,
        *,
        expected_seq: int,
        fence: int | None,
        source: Message | None,
        target_lane: str | None,
        graph: Graph,
        request_id: str | None,
        sent_by: str,
        change: Mutation,
    ) -> asyncio.Future[Any]:
        """:meth:`handoff` without waiting; merged with the job's last emit when adjacent.
        ``change`` is what the hand-on writes (:meth:`~dualplane.common.job_state.JobState.hand_on`)."""
        message = b""
        target = ""
        if target_lane == EXTERNAL_LANE:  # no stream: the job waits for external workers' claims
            message = b"external"
        elif target_lane is not None:
            target = self.keys.stream_for_lane(target_lane)
            message = Handoff(
                job_id=job_id, handoff_seq=expected_seq + 1, graph=graph, request_id=request_id, sent_by=sent_by
            ).model_dump_json(exclude_defaults=True).encode()
        src_stream = source.stream if source else self.keys.control_stream
        return self._call(_Call(
            "handoff",
            [self.keys.job(job_id), self.keys.events(job_id), src_stream, target or src_stream,
             self.keys.active_jobs],
            [self.keys.prefix, job_id, expected_seq, time.time(), self.keys.group_for_stream(src_stream),
             source.id if source else "", message, self.config.finished_job_ttl_s,
             "" if fence is None else fence],
            change, merge_key=(job_id, fence),
        ))

    async def job_and_raw_state(self, job_id: str, node_id: str) -> tuple[Job, bytes | None]:
        """The job and one node's state as stored (the value an external write compares with)."""
        raw = await self.client.hgetall(self.keys.job(job_id))
        if not raw:
            raise UnknownJob(job_id)
        fields = {_s(k): v for k, v in raw.items()}
        return job_from_hash(fields), fields.get(node_field(node_id))

    async def external_write(
        self,
        job_id: str,
        node_id: str,
        *,
        token: int | None,
        lease_s: float | None,
        expected_state: bytes,
        change: Mutation,
    ) -> tuple[int, float | None]:
        """An external worker's claim (``token`` None; a lease of ``lease_s``) or report (with its
        ``token``; ``lease_s`` None ends the claim, anything else renews it) on a node of a job
        that waits on external workers (see external.lua). Returns (token, the lease's deadline
        or None once ended), or (code, None) with code -1 held or stale, -2 gone, -3 the job does
        not wait on external workers, -4 the node's state changed since it was read."""
        if token is None:
            op, lease = "claim", repr(lease_s)
        else:
            op, lease = "report", "" if lease_s is None else "1"
        reply = await self._call(_Call(
            "external",
            [self.keys.job(job_id), self.keys.events(job_id)],
            [self.keys.prefix, job_id, node_id, op, "" if token is None else token, repr(time.time()), lease,
             expected_state],
            change,
        ))
        code = int(reply[0])
        return code, (float(reply[2]) if code > 0 and reply[2] else None)

    async def job_status(self, job_id: str) -> str:
        """The job's status; :class:`UnknownJob` when there is no such job."""
        status = await self.client.hget(self.keys.job(job_id), "status")
        if status is None:
            raise UnknownJob(job_id)
        return _s(status)

    async def publish_cancel(self, job_id: str) -> None:
        """Tell every plane that ``job_id``'s cancel was requested (the ``cancels`` channel): the
        fast path that stops a running node within a step; the job's flag stays the truth."""
        await self.client.publish(self.keys.cancels_channel, job_id)

    async def subscribe_cancels(self) -> Any:
        """A Pub/Sub subscription to cancel requests (messages carry job ids), confirmed by
        the server before it returns, so no request published afterwards is missed.
        ``get_message(ignore_subscribe_messages=True, timeout=s)`` reads it; ``aclose()`` ends it."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.keys.cancels_channel)
            while True:
                message = await pubsub.get_message(timeout=2.0)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        except BaseException:
            await pubsub.aclose()
            raise

    async def cancel_flags(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs have a cancel request (one round trip)."""
        if not job_ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "cancel")
        return {job_id for job_id, flag in zip(job_ids, await pipe.execute(), strict=True) if flag}

    async def get_job(self, job_id: str) -> Job:
        raw = await self.client.hgetall(self.keys.job(job_id))
        if not raw:
            raise UnknownJob(job_id)
        return job_from_hash({_s(k): v for k, v in raw.items()})

    async def events(self, job_id: str, since: int = 0, count: int | None = None) -> list[Event]:
        """Events with ``seq > since``, in order, from the events stream (the truth)."""
        entries = await self.client.xrange(self.keys.events(job_id), min=stream_id(since + 1), count=count)
        return [Event.model_validate_json(fields[EVENT_FIELD]) for _, fields in entries]

    async def raw_events(self, job_id: str, since: int = 0) -> list[bytes]:
        entries = await self.client.xrange(self.keys.events(job_id), min=stream_id(since + 1))
        return [fields[EVENT_FIELD] for _, fields in entries]

    async def job_fields(self, job_id: str, *names: str) -> list[str | bytes | None]:
        """A few raw fields of a job's hash ("user" and "tasks" come back as str)."""
        values = await self.client.hmget(self.keys.job(job_id), list(names))
        return [_s(v) if v is not None and n in ("user", "tasks", "status") else v for n, v in zip(names, values, strict=False)]

    async def job_owner(self, job_id: str) -> str | None:
        """The user of a job (None for one without); :class:`KeyError` when there is no such job."""
        exists, user = await self.client.hmget(self.keys.job(job_id), ["id", "user"])
        if exists is None:
            raise KeyError(job_id)
        return _s(user) if user else None

    async def wait_finished(self, job_id: str, timeout_s: float) -> bool:
        """Block until the job's terminal job-level event is in its stream, or the timeout.
        Reads the events stream (XREAD BLOCK), so nothing published meanwhile is missed."""
        status, seq = await self.client.hmget(self.keys.job(job_id), ["status", "seq"])
        if status is None:
            raise UnknownJob(job_id)
        if _s(status) in FINISHED:
            return True
        last = stream_id(int(seq or 0))
        deadline = time.monotonic() + timeout_s
        while (remaining_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            # blocks in slices: the client's socket timeout (5 s by default) must not cut a read
            reply = await self.client.xread({self.keys.events(job_id): last}, count=100,
                                            block=min(remaining_ms, MAX_BLOCK_MS))
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if is_final_event(fields[EVENT_FIELD]):
                        return True
        return False

    async def delete_job(self, job_id: str, user: str | None) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.job(job_id), self.keys.events(job_id))
        pipe.zrem(self.keys.jobs_index, job_id)
        pipe.zrem(self.keys.active_jobs, job_id)
        if user:
            pipe.zrem(self.keys.user_jobs(user), job_id)
        await pipe.execute()

    # -- reconciliation (control/reconciler.py) -----------------------------------------

    async def mark_instance(self) -> bool:
        """Set the instance marker if it is missing; True when it was (a new or emptied Redis)."""
        return bool(await self.client.set(self.keys.instance, str(time.time()), nx=True))

    async def active_jobs(self, *, after: tuple[float, str] | None, count: int) -> list[tuple[str, float]]:
        """Unfinished jobs, oldest first, after ``(created_at, id)``."""
        low = "-inf" if after is None else str(after[0])
        rows = await self.client.zrange(self.keys.active_jobs, low, "+inf", byscore=True, offset=0,
                                        num=count + 64, withscores=True)
        out = [(_s(member), float(score)) for member, score in rows]
        if after is not None:  # ids sharing the last score may repeat: skip what was seen
            out = [(j, t) for j, t in out if (t, j) > after]
        return out[:count]

    async def handoff_positions(self, job_ids: Sequence[str]) -> list[tuple[str, int, str, str] | None]:
        """(status, handoff_seq, lane stream, entry id) of each job; None where the job is gone
        or names no entry."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), ["status", "handoff_seq", "lane", "msg"])
        out: list[tuple[str, int, str, str] | None] = []
        for status, handoff_seq, lane, msg in await pipe.execute():
            if status is None or not lane or not msg:
                out.append(None)
            else:
                out.append((_s(status), int(handoff_seq or 0), _s(lane), _s(msg)))
        return out

    async def entries_exist(self, entries: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether each (stream, entry id) is still in its stream."""
        pipe = self.client.pipeline(transaction=False)
        for stream, entry_id in entries:
            pipe.xrange(stream, entry_id, entry_id, count=1)
        return [bool(rows) for rows in await pipe.execute()]

    async def requeue(self, job: Job, *, lane_stream: str, entry_id: str, reason: str) -> int:
        """Hand ``job`` on again on ``lane_stream`` when its entry ``entry_id`` is really gone
        and the job has not moved on (checked atomically). Returns the last seq, 0 when nothing
        was done, -2 when the job is gone."""
        message = Handoff(job_id=job.id, handoff_seq=job.handoff_seq + 1, graph=job.graph,
                          request_id=job.request_id, sent_by="reconciler").model_dump_json(exclude_defaults=True)
        _, event = event_body("data", job.id, message=reason, data={"requeued": reason}, plane="control")
        return int(await self._call(_Call(
            "requeue",
            [self.keys.job(job.id), self.keys.events(job.id), lane_stream, self.keys.active_jobs],
            [self.keys.prefix, job.id, time.time(), job.handoff_seq, entry_id, message, event],
        )))

    async def job_page(self, index: str, *, max_score: str, min_score: str, count: int) -> list[tuple[str, float]]:
        """Newest-first ids (with their created_at) from a job index, by score range."""
        rows = await self.client.zrange(index, max_score, min_score, desc=True, byscore=True, offset=0,
                                        num=count, withscores=True)
        return [(_s(member), float(score)) for member, score in rows]

    async def job_summaries(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Summary fields of many jobs in one round trip; None for jobs that expired."""
        names = ["id", "status", "user", "tasks", "progress", "created_at", "finished_at", "request_id", "name"]
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), names)
        out: list[dict[str, Any] | None] = []
        for values in await pipe.execute():
            if values[0] is None:
                out.append(None)
                continue
            row = dict(zip(names, (_s(v) if v is not None else None for v in values), strict=False))
            out.append({
                "id": row["id"], "status": row["status"], "user": row["user"],
                "tasks": row["tasks"].split(",") if row["tasks"] else [],
                "progress": float(row["progress"] or 0), "created_at": float(row["created_at"] or 0),
                "finished_at": float(row["finished_at"]) if row["finished_at"] else None,
                "request_id": row["request_id"], "name": row["name"],
            })
        return out

    async def forget_expired(self, index: str, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self.client.zrem(index, *job_ids)

    async def get_preferences(self, user: str) -> dict[str, Any]:
        raw = await self.client.get(self.keys.preferences(user))
        return orjson.loads(raw) if raw else {}

    async def put_preferences(self, user: str, preferences: dict[str, Any]) -> None:
        await self.client.set(self.keys.preferences(user), _dumps(preferences))

    async def count_submission(self, user: str, amount: int = 1, window_s: int = 60) -> tuple[int, int]:
        """Fixed-window submission counter: (submissions in this window, seconds until it ends)."""
        window = int(time.time() // window_s)
        key = self.keys.rate(user, window)
        pipe = self.client.pipeline(transaction=True)
        pipe.incrby(key, amount)
        pipe.expire(key, window_s + 1)
        count, _ = await pipe.execute()
        return int(count), int((window + 1) * window_s - time.time()) + 1

    async def live_workers(self) -> list[bytes]:
        """Manifests of every worker whose capability key has not expired."""
        keys = [key async for key in self.client.scan_iter(match=self.keys.workers_pattern(), count=500)]
        if not keys:
            return []
        return [value for value in await self.client.mget(keys) if value is not None]

    async def publish_capabilities(self, worker_id: str, manifest_json: bytes, ttl_s: float) -> None:
        await self.client.set(self.keys.worker(worker_id), manifest_json, px=int(ttl_s * 1000))

    async def remove_worker(self, worker_id: str) -> None:
        await self.client.delete(self.keys.worker(worker_id))


def parse_claim(reply: Any) -> Claim:
    """Decode a claim script reply."""
    code = int(reply[0])
    if code == -2:
        return Claim(ok=False, gone=True)
    if code == -1:
        return Claim(ok=False)
    states = {_s(reply[i]): orjson.loads(reply[i + 1]) for i in range(6, len(reply), 2)}
    return Claim(ok=True, status=_s(reply[1]), cancel_requested=bool(reply[2]), node_states=states,
                 created_at=float(reply[3]) if reply[3] else None, user=_s(reply[4]) or None,
                 fence=int(reply[5]))


def job_from_hash(raw: dict[str, bytes]) -> Job:
    """Assemble a :class:`Job` from its hash: the spec, overlaid with every node's state."""
    graph = orjson.loads(raw["spec"])
    for node in graph["nodes"]:
        state = raw.get(_NODE_FIELD + node["id"])
        if state is not None:
            node.update(orjson.loads(state))
    job = {
        "id": _s(raw["id"]),
        "status": _s(raw["status"]),
        "graph": graph,
        "owner": _s(raw.get("owner", b"control")),
        "handoff_seq": int(raw.get("handoff_seq", 0)),
        "seq": int(raw.get("seq", 0)),
        "progress": float(raw.get("progress", 0) or 0),
        "request_id": _s(raw["request_id"]) if raw.get("request_id") else None,
        "user": _s(raw["user"]) if raw.get("user") else None,
        "cancel_requested": bool(raw.get("cancel")),
        "created_at": float(raw["created_at"]),
        "updated_at": float(raw["updated_at"]) if raw.get("updated_at") else None,
        "finished_at": float(raw["finished_at"]) if raw.get("finished_at") else None,
        "error": _s(raw["error"]) if raw.get("error") else None,
        "name": graph.get("metadata", {}).get("name"),
    }
    return Job.model_validate(job)


def node_field(node_id: str) -> str:
    return _NODE_FIELD + node_id


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _with_handoff_seq(raw: str | None, job_id: str, handoff_seq: int) -> str | None:
    """A dead-lettered handoff message of ``job_id`` made current again; anything else unchanged
    (a message that cannot be read stays what it was, and is dead-lettered again)."""
    try:
        message = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(message, dict) or message.get("job_id") != job_id:
        return raw
    return orjson.dumps({**message, "handoff_seq": handoff_seq}).decode()


def _lenient(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _is_nogroup(exc: Exception) -> bool:
    """The group is gone (NOGROUP), or the stream under a blocked read was (UNBLOCKED)."""
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))


class LeaseKeeper:
    """Keeps in-flight messages claimed while their nodes run, and tells when one was lost.

    It runs in its own thread with its own connection, so a task that blocks the event
    loop (a long sync torch call holding it) cannot let its lease lapse. A renewal only
    touches entries this consumer still owns (``renew.lua``): a consumer that was paused past
    its lease and comes back must not take back what another consumer reclaimed meanwhile.
    The ids it lost go to ``on_lost`` (called in the keeper's thread).
    """

    def __init__(self, redis_url: str, keys: Keys, consumer: str, interval_s: float,
                 on_lost: Callable[[str, list[str]], None] | None = None) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._renew = self._client.register_script(
            (resources.files("dualplane.common") / "lua" / "renew.lua").read_text())
        self._keys = keys
        self._consumer = consumer
        self._interval_s = interval_s
        self._on_lost = on_lost
        self._held: dict[str, set[str]] = {}
        #: When each held entry's lease was last known to be ours (monotonic, when the renewal
        #: was sent): nobody can have reclaimed it less than a lease after that.
        self._renewed: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{consumer}", daemon=True)
        self.beats = 0

    def start(self) -> None:
        self._thread.start()

    def hold(self, stream: str, message_id: str) -> None:
        with self._lock:
            self._held.setdefault(stream, set()).add(message_id)
            self._renewed[(stream, message_id)] = time.monotonic()

    def drop(self, stream: str, message_id: str) -> None:
        with self._lock:
            self._held.get(stream, set()).discard(message_id)
            self._renewed.pop((stream, message_id), None)

    def fresh(self, stream: str, message_id: str, within_s: float) -> bool:
        """Whether the entry's lease was ours less than ``within_s`` ago."""
        with self._lock:
            renewed = self._renewed.get((stream, message_id))
        return renewed is not None and time.monotonic() - renewed < within_s

    def renew_now(self, stream: str, message_id: str) -> bool:
        """Renew one entry at once (blocking): True if it is still this consumer's."""
        sent = time.monotonic()
        lost = self._renew(keys=[stream], args=[self._keys.group_for_stream(stream), self._consumer, message_id])
        if lost:
            return False
        with self._lock:
            if message_id in self._held.get(stream, ()):
                self._renewed[(stream, message_id)] = sent
        return True

    def held(self) -> dict[str, list[str]]:
        with self._lock:
            return {stream: sorted(ids) for stream, ids in self._held.items() if ids}

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.beat()

    def beat(self) -> None:
        for stream, ids in self.held().items():
            sent = time.monotonic()
            try:
                lost = self._renew(keys=[stream], args=[self._keys.group_for_stream(stream), self._consumer, *ids])
            except redis.RedisError:
                continue  # the next beat retries; the lease is several beats long
            with self._lock:  # acknowledged meanwhile: not lost, just done
                held = self._held.get(stream, set())
                lost = [_s(mid) for mid in lost if _s(mid) in held]
                for mid in held.intersection(ids).difference(lost):
                    self._renewed[(stream, mid)] = sent
            if lost and self._on_lost is not None:
                self._on_lost(stream, lost)
        self.beats += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._client.close()
