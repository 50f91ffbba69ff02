"""The worker directory: each live worker's capability manifest, under a key with a TTL."""

from __future__ import annotations

from dualplane.common.bridge.connection import BridgeCore


class DirectoryOps(BridgeCore):
    async def live_workers(self) -> list[bytes]:
        """Manifests of every worker whose capability key has not expired."""
        keys = [key async for key in self._redis.scan_iter(match=self.keys.workers_pattern(), count=500)]
        if not keys:
            return []
        return [value for value in await self._redis.mget(keys) if value is not None]

    async def publish_capabilities(self, worker_id: str, manifest_json: bytes, ttl_s: float) -> None:
        await self._redis.set(self.keys.worker(worker_id), manifest_json, px=int(ttl_s * 1000))

    async def remove_worker(self, worker_id: str) -> None:
        await self._redis.delete(self.keys.worker(worker_id))
