"""Workflows on limited queues, and a schedule, for tests/test_flow_control.py.

Each run of `hold` appends `<key> <enter> <leave> <pid>` (epoch seconds) to
a file, so a test can tell how many ran at once. The schedule is declared
only in workers started with DURABLE_TEST_SCHEDULES=1: every other test's
workers import this module too.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import durable
from tests.workflows import effects_dir
from workers.app import dur

dur.queue("limited", concurrency=2)
dur.queue("partitioned", partition_concurrency=1)
dur.queue("rated", rate_limit="5/s")


def note(name: str, line: str) -> None:
    effects_dir().mkdir(parents=True, exist_ok=True)
    with open(effects_dir() / name, "a") as f:
        f.write(line + "\n")


def spans(name: str) -> list[tuple[str, float, float, int]]:
    """(key, enter, leave, pid) of every run noted in `name`."""
    path = effects_dir() / name
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, enter, leave, pid = line.split()
        out.append((key, float(enter), float(leave), int(pid)))
    return out


def most_at_once(runs: list[tuple[str, float, float, int]]) -> int:
    events = sorted([(enter, 1) for _, enter, _, _ in runs] + [(leave, -1) for _, _, leave, _ in runs])
    inside = peak = 0
    for _, change in events:  # a leave sorts before an enter at the same instant
        inside += change
        peak = max(peak, inside)
    return peak


@dur.step(name="flow.hold_step")
def hold_step(key: str, seconds: float) -> None:
    enter = time.time()
    time.sleep(seconds)
    note("hold.spans", f"{key} {enter:.6f} {time.time():.6f} {os.getpid()}")


@dur.workflow(name="flow.hold", queue="limited")
def hold(key: str, seconds: float) -> str:
    hold_step(key, seconds)
    return key


@dur.workflow(name="flow.started", queue="rated")
def started(key: str) -> float:
    return durable.now()


@dur.workflow(name="flow.latest")
def latest(key: str, value: str) -> str:
    note("latest.runs", f"{key} {value} 0 {os.getpid()}")
    return value


if os.environ.get("DURABLE_TEST_SCHEDULES") == "1":

    @dur.scheduled(every=2.0, name="flow.every-2s")
    def every_two_seconds(scheduled_at: dt.datetime) -> None:
        note("ticks", f"{scheduled_at.timestamp():.3f} {time.time():.6f} 0 {os.getpid()}")
