"""saq on Redis: worker and producer.

Settings (saq's README: asyncio, a concurrency in the tens for short jobs, uvloop):

- worker: ``Worker(queue, functions, concurrency=32)`` on uvloop, one per process
  (``python peer_saq.py worker``; run.py starts P of them), other settings saq's defaults;
- results: ``await queue.enqueue("noop")`` then ``await job.refresh(until_complete=...)`` (saq's
  own wait: a Pub/Sub notification on the job's key) and ``job.result``; a standing listener
  keeps saq's Pub/Sub subscription open (see produce). ``queue.apply`` is not used: it polls
  every 0.5 s.
"""

from __future__ import annotations

import asyncio
import os
import time

import peerlib
import uvloop
from saq import Queue, Worker

URL = os.environ["PEER_REDIS_URL"]
CONCURRENCY = 32
TIMEOUT_S = 60.0
#: How long one wait for a job's notification lasts before the job is read again.
MISS_S = 0.05


async def noop(ctx: dict) -> None:
    return None


async def ping(ctx: dict) -> int:
    return os.getpid()


async def work() -> None:
    queue = Queue.from_url(URL)
    worker = Worker(queue, functions=[noop, ping], concurrency=CONCURRENCY)
    await queue.connect()
    try:
        await worker.start()
    finally:
        await queue.disconnect()


async def produce(args) -> None:
    queue = Queue.from_url(URL)
    await queue.connect()
    # saq's job.refresh(until_complete=...) waits on the queue's one Pub/Sub subscription, which
    # saq opens on the first wait and drops after the last; a job that finishes while it is being
    # re-opened is missed until the timeout. A standing listener keeps it open, as in a producer
    # that always has some job in flight; a wait that still misses is retried (and counted).
    keepalive = asyncio.create_task(queue.listen(["bench-keepalive"], lambda *_: False, timeout=None))
    await asyncio.sleep(0.2)

    async def result(job):
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                await job.refresh(until_complete=MISS_S)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                peerlib.NOTES["missed_notifications"] = peerlib.NOTES.get("missed_notifications", 0) + 1
        if job.status != "complete" and job.function == "ping":
            # saq's sweep at worker start aborts a job it finds dequeued but not yet marked
            # active; a ping enqueued while the worker starts may be one: ping again
            return None
        if job.status != "complete":
            raise RuntimeError(f"saq job {job.key} is {job.status}")
        return job.result

    try:
        await peerlib.drive_async(args, lambda: queue.enqueue("noop"), result, lambda: queue.enqueue("ping"))
    finally:
        keepalive.cancel()
        await queue.disconnect()


def main() -> None:
    args = peerlib.arguments()
    uvloop.run(work() if args.role == "worker" else produce(args))


if __name__ == "__main__":
    main()
