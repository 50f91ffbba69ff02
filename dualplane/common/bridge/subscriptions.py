"""Pub/Sub subscriptions: the hub's one pattern subscription to every job's event channels, and
a consumer's subscription to cancel requests. Each one is an object of the bridge's making, so
its Redis client and errors stay inside the bridge (a drop raises :class:`RedisUnavailable`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.replies import text
from dualplane.common.bridge.translation import translated

#: ``(channel, data)`` of a published event.
OnMessage = Callable[[bytes, bytes], None]


class EventSubscription:
    """One PSUBSCRIBE to a set of patterns, on a connection of its own without redis-py's silent
    retry: a drop must be seen, because what was published meanwhile is lost and has to be
    refilled from the streams. :meth:`subscribe` again after a drop."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, patterns: Sequence[str]) -> None:
        self._client = client
        self._redis: aioredis.Redis | None = None
        self._patterns = list(patterns)
        self._pubsub: Any = None

    def _connect(self) -> aioredis.Redis:
        """A client of one server: the Redis, or on a cluster any node the slot map lists now
        (plain Pub/Sub messages reach every node of a cluster), chosen anew after each drop."""
        if isinstance(self._client, aioredis.RedisCluster):
            node = self._client.get_random_node()
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k not in ("retry",)}
            connection_class: Any = node.connection_class
        else:
            kwargs = dict(self._client.connection_pool.connection_kwargs)
            connection_class = self._client.connection_pool.connection_class
        kwargs.update(retry=Retry(NoBackoff(), 0), retry_on_error=[], socket_timeout=None,
                      health_check_interval=0)
        return aioredis.Redis(connection_pool=aioredis.ConnectionPool(
            connection_class=connection_class, max_connections=2, **kwargs))

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
    def event_subscription(self, kinds: Sequence[str]) -> EventSubscription:
        """A subscription to these kinds of event (``status``, ``progress``...) of every job,
        with the settings of the bridge's pool (not yet subscribed: :meth:`EventSubscription.subscribe`)."""
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
