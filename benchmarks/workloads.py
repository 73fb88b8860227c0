"""Benchmark-only durable workflows, imported by workers through
DURABLE_IMPORTS=benchmarks.workloads (they register on workers.app's `dur`).

Markers go to files in BENCH_DIR: one line per event, written with a single
append, so the driver can read when a step (re)started and in which process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import durable
from workers.app import dur


def _mark(name: str, text: str) -> None:
    directory = Path(os.environ.get("BENCH_DIR", "/tmp/durable-bench"))
    with open(directory / name, "a") as f:
        f.write(text + "\n")


# A limit too high to bind: what the gate costs every start (benchmarks.run --only limits).
dur.queue("bench-limited", concurrency=100_000)


@dur.celery.task(name="bench.noop_task")
def noop_task(i: int) -> int:
    """A plain Celery task, for `dur.chain` against Celery's own chain."""
    return i


@dur.step(name="bench.noop")
def noop(i: int) -> int:
    return i


@dur.workflow(name="bench.steps")
def steps(n: int) -> int:
    """n no-op steps: throughput, per-step overhead, memory."""
    for i in range(n):
        noop(i)
    return n


@dur.step(name="bench.blocker")
def blocker(tag: str) -> float:
    """Hangs on the first execution so the driver can SIGKILL its process;
    a recovered execution returns at once. Writes `recovery_attempts pid time`."""
    ctx = durable.context()
    now = time.time()
    _mark(f"recover-{tag}", f"{ctx.recovery_attempts} {os.getpid()} {now:.6f}")
    if ctx.recovery_attempts == 0:
        time.sleep(300)
    return now


@dur.workflow(name="bench.recover")
def recover(tag: str) -> float:
    noop(0)
    t = blocker(tag)
    noop(1)
    return t


class Hold(Exception):
    pass


@dur.step(name="bench.gate", retries=100_000, interval=3600.0, backoff=1.0)
def gate(tag: str) -> None:
    """Always fails with a one-hour back-off, so the workflow suspends with all
    its earlier steps checkpointed. The driver makes the retry due and publishes
    the workflow: each publish is one replay, and this line is its end."""
    _mark(f"gate-{tag}", f"{durable.context().attempt} {time.time():.6f}")
    raise Hold(tag)


@dur.workflow(name="bench.replay")
def replay(tag: str, n: int) -> None:
    for i in range(n):
        noop(i)
    gate(tag)
