"""Per-user state the control plane's limits read: preferences, submission rate windows, failed logins."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from dualplane.common.bridge.batching import Call
from dualplane.common.bridge.connection import BridgeCore

#: Whose failed logins are counted: ("user", an account name) or ("ip", a client network).
LoginCounter = tuple[str, str]


class LimitOps(BridgeCore):
    async def get_preferences(self, user: str) -> dict[str, Any]:
        raw = await self._redis.get(self.keys.preferences(user))
        return orjson.loads(raw) if raw else {}

    async def put_preferences(self, user: str, preferences: dict[str, Any]) -> None:
        await self._redis.set(self.keys.preferences(user), orjson.dumps(preferences))

    async def count_submission(self, user: str, amount: int = 1, window_s: int = 60) -> tuple[int, int]:
        """Fixed-window submission counter: (submissions in this window, seconds until it ends)."""
        window = int(time.time() // window_s)
        key = self.keys.rate(user, window)
        pipe = self._transaction_client(key).pipeline(transaction=True)
        pipe.incrby(key, amount)
        pipe.expire(key, window_s + 1)
        count, _ = await pipe.execute()
        return int(count), int((window + 1) * window_s - time.time()) + 1

    async def admit_login(self, limits: Sequence[tuple[LoginCounter, int]], window_s: float, member: str) -> float:
        """Count a login attempt (``member``) as a failure of each counter, atomically with the
        check of each one's limit (``login_admit.lua``): 0 when it is counted, else the seconds
        until it would be (then nothing is counted)."""
        keys = [self.keys.login_failures(*counter) for counter, _ in limits]
        return float(await self._call(Call(
            "login_admit", keys, [time.time(), window_s, *(limit for _, limit in limits), member])))

    async def forget_login_failure(self, counters: Sequence[LoginCounter], member: str) -> None:
        """Take a counted attempt back (it succeeded)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for counter in counters:
                pipe.zrem(self.keys.login_failures(*counter), member)
            await pipe.execute()
