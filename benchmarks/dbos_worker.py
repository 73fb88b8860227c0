"""DBOS Transact baseline: one worker process, `python -m benchmarks.dbos_worker`.

System database from BENCH_DBOS_URL; workflows run from the queue "bench"
(worker_concurrency BENCH_DBOS_CONCURRENCY threads, polling every
BENCH_DBOS_POLL seconds)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dbos import DBOS

DBOS(config={
    "name": "bench",
    "system_database_url": os.environ["BENCH_DBOS_URL"],
    "log_level": "WARNING",
    "run_admin_server": False,
})


@DBOS.step(name="bench_noop")
def noop(i: int) -> int:
    return i


@DBOS.workflow(name="bench_steps")
def steps(n: int) -> int:
    for i in range(n):
        noop(i)
    return n


@DBOS.step(name="bench_blocker")
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


@DBOS.workflow(name="bench_recover")
def recover(tag: str) -> float:
    noop(0)
    t = blocker(tag)
    noop(1)
    return t


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    DBOS.launch()
    DBOS.register_queue(  # needs the system database, so after launch
        "bench",
        worker_concurrency=int(os.environ.get("BENCH_DBOS_CONCURRENCY", "1")),
        polling_interval_sec=float(os.environ.get("BENCH_DBOS_POLL", "0.1")),
    )
    print("dbos worker ready", flush=True)
    while True:
        time.sleep(1)
