"""Per-user state the control plane's limits read: preferences and submission rate windows."""

from __future__ import annotations

import time
from typing import Any

import orjson

from dualplane.common.bridge.connection import BridgeCore


class LimitOps(BridgeCore):
    async def get_preferences(self, user: str) -> dict[str, Any]:
        raw = await self.client.get(self.keys.preferences(user))
        return orjson.loads(raw) if raw else {}

    async def put_preferences(self, user: str, preferences: dict[str, Any]) -> None:
        await self.client.set(self.keys.preferences(user), orjson.dumps(preferences))

    async def count_submission(self, user: str, amount: int = 1, window_s: int = 60) -> tuple[int, int]:
        """Fixed-window submission counter: (submissions in this window, seconds until it ends)."""
        window = int(time.time() // window_s)
        key = self.keys.rate(user, window)
        pipe = self.client.pipeline(transaction=True)
        pipe.incrby(key, amount)
        pipe.expire(key, window_s + 1)
        count, _ = await pipe.execute()
        return int(count), int((window + 1) * window_s - time.time()) + 1
