"""The worker directory: each live worker's capability manifest, under a key with a TTL, and
the ``workers`` sorted set that names them.

A read takes the names from the set and the manifests with one MGET: it never scans the
keyspace, which holds two keys per job (a SCAN for ``worker:*`` behind 1M queued jobs walked
2M keys, every routing refresh). The keys stay the truth: a name whose key expired is skipped.
"""

from __future__ import annotations

import time

from dualplane.common.bridge.connection import BridgeCore
from dualplane.common.bridge.replies import text

#: A name stays in the set this long after its key's expiry, then a publish drops it: the set
#: stays as small as the workers of the last hour, and a publisher whose clock is behind by less
#: than this is never dropped while it lives (the score is the publisher's clock).
FORGET_AFTER_S = 3600.0


class DirectoryOps(BridgeCore):
    async def live_workers(self) -> list[bytes]:
        """Manifests of every worker whose capability key has not expired."""
        names = await self._redis.zrange(self.keys.workers, 0, -1)
        if not names:
            return []
        values = await self._redis.mget([self.keys.worker(text(name)) for name in names])
        return [value for value in values if value is not None]

    async def publish_capabilities(self, worker_id: str, manifest_json: bytes, ttl_s: float) -> None:
        now = time.time()
        pipe = self._transaction_client(self.keys.workers).pipeline(transaction=True)
        pipe.set(self.keys.worker(worker_id), manifest_json, px=int(ttl_s * 1000))
        pipe.zadd(self.keys.workers, {worker_id: now + ttl_s})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - FORGET_AFTER_S)
        await pipe.execute()

    async def remove_worker(self, worker_id: str) -> None:
        pipe = self._transaction_client(self.keys.workers).pipeline(transaction=True)
        pipe.delete(self.keys.worker(worker_id))
        pipe.zrem(self.keys.workers, worker_id)
        await pipe.execute()
