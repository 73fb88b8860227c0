"""Workflows for the lease tests (tests/test_leases.py): a step that holds
the GIL in one C call, and one that records the time its process reads."""

from __future__ import annotations

import threading
import time

from tests.workflows import record
from workers.app import dur


def _sum_rate() -> float:
    """Integers per second `sum(range(n))` adds here, on this thread's CPU
    time (a busy machine slows the wall clock, not this): the fastest of a
    few tries, so a call sized with it lasts at least as long as asked."""
    n = 5_000_000
    best = float("inf")
    for _ in range(4):
        started = time.thread_time()
        sum(range(n))
        best = min(best, time.thread_time() - started)
    return n / max(best, 1e-6)


# measured once, when the worker imports this module: the step holds the GIL
# from its first instant, before its process's lease keeper first runs
SUM_RATE = _sum_rate()


def hold_the_gil(seconds: float) -> float:
    """Run one C call that holds the GIL for at least `seconds` (sum() over
    a range never returns to the interpreter loop, so no other thread of this
    process runs meanwhile); returns the longest time another thread of this
    process was kept from running, measured by a thread that ticks every 5 ms."""
    n = int(SUM_RATE * seconds)
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    # the gap is measured between ticks: one before the C call, one after
    # (on a busy machine the ticker may take a while to get a CPU)
    while not ticks:
        time.sleep(0.001)
    sum(range(n))
    ticked = len(ticks)
    deadline = time.monotonic() + 10
    while len(ticks) == ticked and time.monotonic() < deadline:
        time.sleep(0.001)
    stop.set()
    ticker.join()
    return max((b - a for a, b in zip(ticks, ticks[1:])), default=0.0)


@dur.step()
def gil_step(seconds: float) -> float:
    held = hold_the_gil(seconds)
    record("gil_step")  # after: a step taken over is recorded by each run that ends
    return held


@dur.workflow()
def holds_the_gil(seconds: float) -> float:
    """One step that holds the GIL for `seconds`; returns how long it did."""
    return gil_step(seconds)


@dur.step()
def long_step(seconds: float) -> str:
    record("long_step")
    time.sleep(seconds)
    return "done"


@dur.workflow()
def one_long_step(seconds: float) -> str:
    return long_step(seconds)


@dur.workflow()
def local_time() -> float:
    """The wall clock this worker's process reads (what libfaketime shows it)."""
    return time.time()
