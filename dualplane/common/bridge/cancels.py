"""Cancel requests: the ``cancels`` channel (the fast path; subscribed in :mod:`.subscriptions`)
and the jobs' flags (the truth)."""

from __future__ import annotations

from collections.abc import Sequence

from dualplane.common.bridge.connection import BridgeCore


class CancelOps(BridgeCore):
    async def publish_cancel(self, job_id: str) -> None:
        """Tell every plane that ``job_id``'s cancel was requested (the ``cancels`` channel): the
        fast path that stops a running node within a step; the job's flag stays the truth."""
        await self._redis.publish(self.keys.cancels_channel, job_id)

    async def cancel_flags(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs have a cancel request (one round trip)."""
        if not job_ids:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "cancel")
        return {job_id for job_id, flag in zip(job_ids, await pipe.execute(), strict=True) if flag}
