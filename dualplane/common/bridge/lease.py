"""The lease keeper: renews the claims of in-flight messages from a thread of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from dualplane.common.bridge.batching import Call, Scripts
from dualplane.common.bridge.cluster import sync_cluster_client
from dualplane.common.bridge.keys import Keys
from dualplane.common.bridge.replies import text
from dualplane.common.bridge.translation import translated


class LeaseKeeper:
    """Keeps in-flight messages claimed while their nodes run, and tells when one was lost.

    It runs in its own thread with its own connection, so a task that blocks the event
    loop (a long sync torch call holding it) cannot let its lease lapse. A renewal only
    touches entries this consumer still owns (``renew.lua``): a consumer that was paused past
    its lease and comes back must not take back what another consumer reclaimed meanwhile.
    The ids it lost go to ``on_lost`` (called in the keeper's thread).
    """

    def __init__(self, redis_url: str, keys: Keys, consumer: str, interval_s: float,
                 on_lost: Callable[[str, list[str]], None] | None = None, *, cluster: bool = False) -> None:
        self._client: redis.Redis | redis.RedisCluster = (
            sync_cluster_client(redis_url) if cluster else redis.Redis.from_url(redis_url))
        self._scripts = Scripts(["renew"])
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
        try:
            lost = self._renew(stream, [message_id])
        except redis.RedisError as exc:
            raise translated(exc) from exc
        if lost:
            return False
        with self._lock:
            if message_id in self._held.get(stream, ()):
                self._renewed[(stream, message_id)] = sent
        return True

    def _renew(self, stream: str, ids: Sequence[str]) -> Any:
        """renew.lua on ``ids`` of ``stream``, with its arguments made where every script's are
        (:meth:`Call.argv`); the ids of those this consumer no longer owns."""
        argv = Call("renew", [stream], [self._keys.group_for_stream(stream), self._consumer, *ids]).argv()
        try:
            return self._client.evalsha(self._scripts.shas["renew"], *argv)
        except NoScriptError:  # Redis restarted and lost its script cache
            return self._client.eval(self._scripts.sources["renew"], *argv)

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
                lost = self._renew(stream, ids)
            except redis.RedisError:
                continue  # the next beat retries; the lease is several beats long
            with self._lock:  # acknowledged meanwhile: not lost, just done
                held = self._held.get(stream, set())
                lost = [text(mid) for mid in lost if text(mid) in held]
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
