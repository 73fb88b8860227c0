"""Schedules (`@dur.scheduled`): when each tick falls, and which ticks a
sweep starts.

A schedule is `cron` (five fields, read by croniter, in a time zone) or
`every` (seconds, ticks aligned to the epoch). Each tick is a workflow
whose ID is the schedule's name and the tick's instant, so a tick runs once
whatever the number of workers; every worker's sweeper may start due ticks
(no beat process). Ticks missed while no worker ran are handled by
`missed`: "skip" (none of them), "run_latest" (the last one) or "run_all".
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MISSED = ("skip", "run_latest", "run_all")
MAX_TICKS_PER_SWEEP = 100  # run_all after a long outage catches up over several sweeps


def _croniter() -> Any:
    """croniter, imported by the first cron schedule: not at every start of
    a worker or a web app that has none."""
    from croniter import croniter

    return croniter


@dataclass(frozen=True)
class Schedule:
    name: str
    workflow_name: str
    cron: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"
    missed: str = "run_latest"
    queue: str | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_ms is None):
            raise ValueError("a schedule needs exactly one of cron= or every=")
        if self.cron is not None and (
            not isinstance(self.cron, str) or len(self.cron.split()) != 5 or not _croniter().is_valid(self.cron)
        ):
            raise ValueError(f"cron must be a valid five-field expression, got {self.cron!r}")
        if self.every_ms is not None and self.every_ms < 1:
            raise ValueError(f"every must be a positive duration, got {self.every_ms} ms")
        if self.missed not in MISSED:
            raise ValueError(f"missed must be one of {MISSED}, got {self.missed!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None

    def next_tick_after(self, after_ms: int) -> int:
        """The first tick strictly after `after_ms`."""
        if self.every_ms is not None:
            return (after_ms // self.every_ms + 1) * self.every_ms
        zone = ZoneInfo(self.timezone)
        start = dt.datetime.fromtimestamp(after_ms / 1000, tz=zone)
        following: dt.datetime = _croniter()(self.cron, start).get_next(dt.datetime)
        return int(following.timestamp() * 1000)

    def ticks_due(self, next_tick_ms: int, now_ms: int) -> tuple[list[int], int]:
        """The ticks to start now, and the next tick to wait for."""
        due: list[int] = []
        tick = next_tick_ms
        while tick <= now_ms and len(due) < MAX_TICKS_PER_SWEEP:
            due.append(tick)
            tick = self.next_tick_after(tick)
        if len(due) == MAX_TICKS_PER_SWEEP and self.missed != "run_all":
            tick = self.next_tick_after(now_ms)  # the rest were missed anyway
        if self.missed == "skip":
            due = [t for t in due if now_ms - t < self.grace_ms()][-1:]
        elif self.missed == "run_latest":
            due = due[-1:]
        return due, tick

    def grace_ms(self) -> int:
        """A tick this late is still on time, not missed: a sweep's delay."""
        return 60_000 if self.every_ms is None else max(1_000, min(60_000, self.every_ms))


def tick_workflow_id(name: str, tick_ms: int) -> str:
    instant = dt.datetime.fromtimestamp(tick_ms / 1000, tz=dt.timezone.utc)
    return f"{name}@{instant.isoformat(timespec='milliseconds')}"


def seconds_to_ms(every: float | dt.timedelta) -> int:
    seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"every must be seconds or a timedelta, got {every!r}")
    return int(round(seconds * 1000))
