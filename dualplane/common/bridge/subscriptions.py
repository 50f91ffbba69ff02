"""Pub/Sub subscriptions: the hub's subscription to job events (on one Redis a pattern
subscription to every job's event channels; on a cluster sharded subscriptions to the jobs it
follows), and a consumer's subscription to cancel requests. Each one is an object of the
bridge's making, so its Redis client and errors stay inside the bridge (a drop raises
:class:`RedisUnavailable`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.keys import Keys
from dualplane.common.bridge.replies import text
from dualplane.common.bridge.translation import translated
from dualplane.common.errors import BridgeError, RedisUnavailable

#: ``(channel, data)`` of a published event.
OnMessage = Callable[[bytes, bytes], None]


class EventSubscription:
    """On one Redis: one PSUBSCRIBE to a set of patterns, on a connection of its own without
    redis-py's silent retry: a drop must be seen, because what was published meanwhile is lost
    and has to be refilled from the streams. :meth:`subscribe` again after a drop."""

    def __init__(self, client: aioredis.Redis, patterns: Sequence[str]) -> None:
        self._client = client
        self._redis: aioredis.Redis | None = None
        self._patterns = list(patterns)
        self._pubsub: Any = None

    def _connect(self) -> aioredis.Redis:
        pool = self._client.connection_pool
        return aioredis.Redis(connection_pool=aioredis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=2,
            **_subscriber_kwargs(pool.connection_kwargs)))

    async def follow(self, job_id: str) -> None:
        """Nothing to do: the patterns cover every job."""

    def unfollow(self, job_id: str) -> None:
        """Nothing to do: the patterns cover every job."""

    async def subscribe(self, on_message: OnMessage) -> None:
        """Subscribe anew; returns once every pattern is confirmed (the subscription is active
        from there). Events published before that go to ``on_message`` too."""
        await self.unsubscribe()
        try:
            if self._redis is not None:
                await self._redis.aclose()
            self._redis = self._connect()
            self._pubsub = self._redis.pubsub()
            await self._pubsub.psubscribe(*self._patterns)
            confirmed = 0
            while confirmed < len(self._patterns):
                message = await self._pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    confirmed += 1
                elif message["type"] == "pmessage":
                    on_message(message["channel"], message["data"])
        except redis.RedisError as exc:
            raise translated(exc) from exc

    async def pump(self, on_message: OnMessage) -> None:
        """Hand every published event to ``on_message`` until the subscription drops (the hot loop)."""
        read = self._pubsub.connection.read_response
        try:
            while True:
                response = await read(timeout=math.inf, push_request=True)
                # [b"pmessage", pattern, channel, data] (a list subclass with hiredis)
                if isinstance(response, list) and len(response) == 4 and response[0] == b"pmessage":
                    on_message(response[2], response[3])
        except redis.RedisError as exc:
            raise translated(exc) from exc

    async def unsubscribe(self) -> None:
        """Drop the subscription, whose connection may already be gone."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def aclose(self) -> None:
        await self.unsubscribe()
        if self._redis is not None:
            await self._redis.aclose()


def _subscriber_kwargs(connection_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A pooled connection's settings for a subscriber's own: no silent retry (a drop must be
    seen), no read timeout (it waits for messages), no health check (it only reads)."""
    kwargs = {k: v for k, v in connection_kwargs.items() if k != "retry"}
    kwargs.update(retry=Retry(NoBackoff(), 0), retry_on_error=[], socket_timeout=None, health_check_interval=0)
    return kwargs


def _lost(exc: BaseException | None) -> BridgeError:
    """What a broken sharded subscription raises: the dualplane error of what broke it."""
    if isinstance(exc, redis.RedisError):
        return translated(exc)
    return RedisUnavailable(f"redis: shard subscription lost ({exc!r})")


class _ShardLink:
    """One connection to one primary carrying the SSUBSCRIBEs of the followed jobs whose slots it
    serves. Commands go out in the order they were asked for (one writer task), so an
    unsubscribe and a new subscribe of the same channel cannot swap; replies and messages are
    read by one reader task. Anything unexpected — the connection drops, an error reply (MOVED:
    the slot has another owner), a ``sunsubscribe`` nobody asked for (the server drops a shard
    channel's subscribers when its slot moves) — breaks the link (``on_broken``)."""

    def __init__(self, connection: Any, on_message: OnMessage, on_broken: Callable[[BaseException], None]) -> None:
        self._connection = connection
        self._on_message = on_message
        self._on_broken = on_broken
        self._outbox: list[tuple[bytes, bytes]] = []
        self._wake = asyncio.Event()
        self._confirming: dict[bytes, list[asyncio.Future[None]]] = collections.defaultdict(list)
        self._unsubscribing: collections.Counter[bytes] = collections.Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await self._connection.connect()
        self._tasks = [asyncio.create_task(self._write(), name="shard-link-writer"),
                       asyncio.create_task(self._read(), name="shard-link-reader")]

    def subscribe(self, channel: bytes) -> asyncio.Future[None]:
        """Send SSUBSCRIBE; the future is done once the server confirmed it (or the link broke)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirming[channel].append(future)
        self._send(b"SSUBSCRIBE", channel)
        return future

    def unsubscribe(self, channel: bytes) -> None:
        self._unsubscribing[channel] += 1
        self._send(b"SUNSUBSCRIBE", channel)

    def _send(self, command: bytes, channel: bytes) -> None:
        self._outbox.append((command, channel))
        self._wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                commands, self._outbox = self._outbox, []
                await self._connection.send_packed_command(self._connection.pack_commands(commands))
        except (redis.RedisError, OSError) as exc:
            self._on_broken(exc)

    async def _read(self) -> None:
        read = self._connection.read_response
        try:
            while True:
                response = await read(timeout=math.inf, push_request=True)
                # [b"smessage", channel, data] (a list subclass with hiredis); then the replies
                if isinstance(response, list) and len(response) == 3:
                    kind, channel = response[0], response[1]
                    if kind == b"smessage":
                        self._on_message(channel, response[2])
                        continue
                    if kind == b"ssubscribe":
                        for future in self._confirming.pop(channel, ()):
                            if not future.done():
                                future.set_result(None)
                        continue
                    if kind == b"sunsubscribe" and self._unsubscribing[channel] > 0:
                        self._unsubscribing[channel] -= 1
                        if not self._unsubscribing[channel]:
                            del self._unsubscribing[channel]
                        continue
                    if kind == b"sunsubscribe":
                        raise redis.ConnectionError(f"the server ended the subscription to {channel!r} "
                                                    "(its slot moved)")
                raise redis.ConnectionError(f"unexpected reply on a shard subscription: {response!r:.200}")
        except (redis.RedisError, OSError) as exc:
            self._on_broken(exc)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for futures in self._confirming.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        with contextlib.suppress(Exception):
            await self._connection.disconnect()


class ShardedEventSubscription:
    """On a Redis Cluster: SSUBSCRIBE to the sharded channel (:meth:`Keys.live_channel`) of each
    job that is followed (:meth:`follow`, counted: two followers of one job make one
    subscription), over one connection per primary that serves one of them, so a hub receives
    the events of its clients' jobs and nothing else.

    Same contract as :class:`EventSubscription`: :meth:`subscribe` returns once every followed
    job's subscription is confirmed, :meth:`pump` returns only by raising when the subscription
    broke — any link's drop, a MOVED, a slot that moved under a channel — and :meth:`subscribe`
    again then reads the slot map anew and subscribes every followed job on its current owner
    (the hub refills them all from the streams). A :meth:`follow` made while the subscription is
    down returns at once: the next :meth:`subscribe` includes it and the refill covers it.

    Not redis-py's ``ClusterPubSub``: it polls its per-node subscriptions in turn, each read with
    a timeout (latency in the hot loop), and re-subscribes quietly after a reconnect, so the gap a
    drop leaves would go unseen and unfilled.

    :param refresh: reads the cluster's slot map again (the bridge's, one refresh at a time).
    """

    def __init__(self, client: aioredis.RedisCluster, keys: Keys, refresh: Callable[[], Awaitable[None]]) -> None:
        self._client = client
        self._keys = keys
        self._refresh = refresh
        self._follows: collections.Counter[str] = collections.Counter()
        #: Per primary (node name), while subscribed.
        self._links: dict[str, _ShardLink] = {}
        #: The link that carries each followed job's subscription, and that subscription's
        #: confirmation (a second follower waits for it too).
        self._link_of: dict[str, _ShardLink] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._on_message: OnMessage | None = None
        #: Done (with the error) once the current subscription broke.
        self._broken: asyncio.Future[None] | None = None

    @property
    def _active(self) -> bool:
        return self._broken is not None and not self._broken.done()

    async def follow(self, job_id: str) -> None:
        """Receive ``job_id``'s events; returns once the server confirmed the subscription (or
        the subscription broke meanwhile, which the re-subscription covers)."""
        self._follows[job_id] += 1
        if not self._active:
            return
        confirmed = self._confirmed.get(job_id)
        if confirmed is None:
            try:
                confirmed = await self._subscribe_on_link(job_id)
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                self._break(exc)
                return
        await self._until_confirmed(confirmed)

    def unfollow(self, job_id: str) -> None:
        """One follower of ``job_id`` fewer (a :meth:`follow` counts from its call, even one that
        raised); the last one's going ends the subscription."""
        if job_id not in self._follows:
            return
        left = self._follows[job_id] - 1
        if left > 0:
            self._follows[job_id] = left
            return
        del self._follows[job_id]
        self._confirmed.pop(job_id, None)
        link = self._link_of.pop(job_id, None)
        if link is not None and self._active:
            link.unsubscribe(self._keys.live_channel(job_id).encode())

    async def _subscribe_on_link(self, job_id: str) -> asyncio.Future[None]:
        """Send the job's SSUBSCRIBE on the link to its slot's primary (opened if need be)."""
        channel = self._keys.live_channel(job_id).encode()
        node = self._client.nodes_manager.get_node_from_slot(key_slot(channel))
        link = self._links.get(node.name)
        if link is None:
            assert self._on_message is not None
            connection = node.connection_class(**_subscriber_kwargs(node.connection_kwargs))
            link = self._links[node.name] = _ShardLink(connection, self._on_message, self._break)
            try:
                await link.open()
            except BaseException:
                if self._links.get(node.name) is link:
                    del self._links[node.name]
                raise
        confirmed = self._confirmed[job_id] = link.subscribe(channel)
        self._link_of[job_id] = link
        return confirmed

    async def _until_confirmed(self, confirmed: asyncio.Future[Any]) -> None:
        assert self._broken is not None
        await asyncio.wait({confirmed, self._broken}, return_when=asyncio.FIRST_COMPLETED)

    def _break(self, exc: BaseException) -> None:
        if self._broken is not None and not self._broken.done():
            self._broken.set_exception(exc)

    async def subscribe(self, on_message: OnMessage) -> None:
        await self.unsubscribe()
        self._on_message = on_message
        broken = self._broken = asyncio.get_running_loop().create_future()
        broken.add_done_callback(lambda f: f.exception())  # read by pump(), or by nobody
        try:
            await self._refresh()
            confirmations = [await self._subscribe_on_link(job_id) for job_id in list(self._follows)]
            await self._until_confirmed(asyncio.gather(*confirmations))
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            self._break(exc)
        if broken.done():
            raise _lost(broken.exception())

    async def pump(self, on_message: OnMessage) -> None:
        """Wait until the subscription breaks, and raise what broke it (the links' readers hand
        the messages to ``on_message`` as they come)."""
        assert self._broken is not None
        try:
            await asyncio.shield(self._broken)
        except Exception as exc:
            raise _lost(exc) from exc

    async def unsubscribe(self) -> None:
        """Drop every link (their connections may already be gone)."""
        self._break(redis.ConnectionError("unsubscribed"))
        links, self._links = list(self._links.values()), {}
        self._link_of.clear()
        self._confirmed.clear()
        await asyncio.gather(*(link.aclose() for link in links))

    async def aclose(self) -> None:
        await self.unsubscribe()


class CancelSubscription:
    """A subscription to the ``cancels`` channel (messages carry job ids)."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def next_cancel(self, timeout_s: float) -> str | None:
        """The id of the next job whose cancel was requested, None when none came within ``timeout_s``."""
        try:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        except redis.RedisError as exc:
            raise translated(exc) from exc
        return text(message["data"]) if message is not None and message["type"] == "message" else None

    async def aclose(self) -> None:
        """End it; its connection may already be gone."""
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()


class SubscriptionOps(BridgeCore):
    def event_subscription(self, kinds: Sequence[str]) -> EventSubscription | ShardedEventSubscription:
        """The hub's subscription to job events, with the settings of the bridge's pool (not yet
        subscribed: ``subscribe``). On one Redis: these kinds of event (``status``,
        ``progress``...) of every job; on a cluster, every event of the jobs it ``follow``s."""
        if self._cluster is not None:
            return ShardedEventSubscription(self._redis, self.keys, self._cluster.refresh)
        return EventSubscription(self._redis, [self.keys.channel_pattern(k) for k in kinds])

    async def subscribe_cancels(self) -> CancelSubscription:
        """A subscription to cancel requests, confirmed by the server before it returns, so no
        request published afterwards is missed."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.cancels_channel)
            while True:
                message = await pubsub.get_message(timeout=2.0)
                if message is not None and message["type"] == "subscribe":
                    return CancelSubscription(pubsub)
        except BaseException:
            await pubsub.aclose()
            raise
