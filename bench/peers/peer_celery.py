"""Celery 5 on Redis (broker and result back-end, redis-py ≥ 6.4): the app module and the producer.

Settings (Celery's advice for many short tasks: the solo pool, a deep prefetch, no
gossip/mingle/heartbeat):

- worker: ``celery -A peer_celery worker -P solo --without-gossip --without-mingle
  --without-heartbeat -Q bench``, one solo worker per process (run.py starts P of them, each with
  its own node name); ``worker_prefetch_multiplier=128``, ``task_acks_late=False``;
- results: the Redis result back-end; the producer calls ``AsyncResult.get()`` (Celery's result
  consumer: a Pub/Sub subscription on the task's key);
- the no-op task: ``ignore_result=False``, JSON serializer (Celery's default).
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ["PEER_REDIS_URL"]
TIMEOUT_S = 60.0

app = Celery("peer_celery", broker=URL, backend=URL)
app.conf.update(
    task_default_queue="bench",
    worker_prefetch_multiplier=128,
    task_acks_late=False,
    task_ignore_result=False,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="ping")
def ping() -> int:
    return os.getpid()


def main() -> None:
    import peerlib

    args = peerlib.arguments()
    peerlib.drive(args, noop.delay, lambda handle: handle.get(timeout=TIMEOUT_S), ping.delay)


if __name__ == "__main__":
    main()
