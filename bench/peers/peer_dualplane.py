"""dualplane's producer for the peer benchmark (run from dualplane's own venv).

The same phases as the peers (peerlib): one ControlPlane object in this process (its control
runner included, as in bench/dispatch.py; jobs submitted through its in-process submission API,
no HTTP), a single-node graph running the ``noop`` task on the python plane, each submission
awaited in turn, then each job waited for in order with ``ControlPlane.wait_finished`` (dualplane's
own result API: XREAD BLOCK on the job's event stream, then the job read back).

Workers: ``python -m dualplane worker`` processes started by run.py (concurrency 512, read batch
512, as ``make bench``); this producer waits until all of them have published their manifests.
"""

from __future__ import annotations

import asyncio
import time

import peerlib

from dualplane.cli.planes import run_async
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane

SINGLE = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
TIMEOUT_S = 60.0


async def produce(args) -> None:
    import os

    settings = Settings(redis_url=os.environ["PEER_REDIS_URL"], s3_endpoint=None, concurrency=256, read_batch=512)
    plane = ControlPlane(settings)
    await plane.start()
    try:
        deadline = time.monotonic() + peerlib.READY_TIMEOUT_S
        while len(await plane.router.workers(fresh=True)) < args.workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"fewer than {args.workers} dualplane workers registered")
            await asyncio.sleep(0.05)

        async def enqueue() -> str:
            return (await plane.submit(SINGLE)).job_id

        async def result(job_id: str) -> object:
            job = await plane.wait_finished(job_id, TIMEOUT_S)
            if job.status != "succeeded":
                raise RuntimeError(f"dualplane job {job_id} is {job.status}")
            return job.graph.nodes[0].output

        await peerlib.drive_async(args, enqueue, result, None)
    finally:
        await plane.stop(1.0)


def main() -> None:
    run_async(produce(peerlib.arguments()))


if __name__ == "__main__":
    main()
