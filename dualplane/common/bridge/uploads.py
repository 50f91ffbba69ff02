"""The per-user index of uploads (key → record JSON; the records' meaning is control_plane/uploads.py)."""

from __future__ import annotations

from dualplane.common.bridge.connection import BridgeCore


class UploadOps(BridgeCore):
    async def put_upload_record(self, user: str, key: str, record_json: str) -> None:
        await self._redis.hset(self.keys.uploads(user), key, record_json)

    async def upload_record(self, user: str, key: str) -> bytes | None:
        raw: bytes | None = await self._redis.hget(self.keys.uploads(user), key)
        return raw

    async def upload_records(self, user: str) -> list[bytes]:
        return list(await self._redis.hvals(self.keys.uploads(user)))

    async def remove_upload_record(self, user: str, key: str) -> bool:
        """False when ``user`` had no record under ``key``."""
        return bool(await self._redis.hdel(self.keys.uploads(user), key))
