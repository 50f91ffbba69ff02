"""Dramatiq on Redis: the worker module (``dramatiq peer_dramatiq``) and the producer.

Settings (Dramatiq's own advice for many short jobs: several processes, several threads each):

- worker: ``dramatiq peer_dramatiq --processes P --threads 8`` (run.py), the default middleware
  plus Results; the Redis broker's defaults (prefetch = 2 × threads, idle back-off from 5 ms up to
  the 1 s worker timeout);
- results: the Results middleware with the Redis backend; the producer blocks on
  ``message.get_result(block=True)`` (BRPOPLPUSH on the result key);
- the no-op actor: ``store_results=True, max_retries=0``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

URL = os.environ["PEER_REDIS_URL"]
TIMEOUT_MS = 60_000

broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(store_results=True, max_retries=0)
def ping() -> int:
    return os.getpid()


def main() -> None:
    import peerlib

    args = peerlib.arguments()
    peerlib.drive(args, noop.send, lambda message: message.get_result(block=True, timeout=TIMEOUT_MS), ping.send)


if __name__ == "__main__":
    main()
