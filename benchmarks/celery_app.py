"""Plain Celery baseline: `celery -A benchmarks.celery_app worker`.

Redis broker and result backend (BENCH_CELERY_BROKER / BENCH_CELERY_BACKEND),
acks_late=True. reject_on_worker_lost=True too: with acks_late alone a task
whose child process is SIGKILLed is acknowledged as failed and its chain is
lost, so there would be no recovery to time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

app = Celery(
    "bench_celery",
    broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/1"),
    backend=os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/2"),
)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i


@app.task(name="bench.blocker")
def blocker(tag: str) -> float:
    directory = Path(os.environ.get("BENCH_DIR", "/tmp/durable-bench"))
    path = directory / f"recover-{tag}"
    first = not path.exists()
    now = time.time()
    with open(path, "a") as f:
        f.write(f"{0 if first else 1} {os.getpid()} {now:.6f}\n")
    if first:
        time.sleep(300)
    return now
