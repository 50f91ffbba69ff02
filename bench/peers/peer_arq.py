"""arq 0.28 on Redis (redis-py < 6): worker and producer.

Settings (tuned: arq polls, so its poll delays are the latency; its defaults are 0.5 s):

- worker: ``max_jobs=64``, ``poll_delay=0.01`` s (queue polling), ``queue_read_limit`` arq's
  default (5 × max_jobs), on uvloop, one per process (``python peer_arq.py worker``; run.py
  starts P of them);
- results: ``await pool.enqueue_job("noop")`` then ``await job.result(poll_delay=0.01)`` (arq's
  result API polls the result key).
"""

from __future__ import annotations

import asyncio
import os
from typing import ClassVar

import peerlib
import uvloop
from arq import create_pool, run_worker
from arq.connections import RedisSettings

URL = os.environ["PEER_REDIS_URL"]
POLL_DELAY_S = 0.01
RESULT_POLL_S = 0.01
TIMEOUT_S = 60.0


async def noop(ctx: dict) -> None:
    return None


async def ping(ctx: dict) -> int:
    return os.getpid()


class WorkerSettings:
    functions: ClassVar = [noop, ping]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 64
    poll_delay = POLL_DELAY_S
    max_tries = 1


async def produce(args) -> None:
    pool = await create_pool(RedisSettings.from_dsn(URL))

    async def result(job):
        return await job.result(timeout=TIMEOUT_S, poll_delay=RESULT_POLL_S)

    try:
        await peerlib.drive_async(args, lambda: pool.enqueue_job("noop"), result, lambda: pool.enqueue_job("ping"))
    finally:
        await pool.aclose()


def main() -> None:
    args = peerlib.arguments()
    if args.role == "worker":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # arq's Worker takes the current loop
        run_worker(WorkerSettings)
    else:
        uvloop.run(produce(args))


if __name__ == "__main__":
    main()
