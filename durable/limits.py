"""A queue's limits (`dur.queue(...)`), checked where they are given and
stored in the database, where every worker and host enforces them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Celery's notation: "10/s", "100/m", "1000/h"; a bare number is per second.
_RATE = re.compile(r"^\s*(\d+)\s*(?:/\s*([smh]))?\s*$")
_PERIOD_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000}


def parse_rate_limit(text: str) -> tuple[int, int]:
    """(starts, period in ms) of a rate limit such as "100/m"."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(
            f"rate_limit must be like '10/s', '100/m' or '1000/h' (a positive count), got {text!r}"
        )
    return int(match.group(1)), _PERIOD_MS[match.group(2) or "s"]


@dataclass(frozen=True)
class QueueLimits:
    name: str
    concurrency: int | None = None  # workflows started and not yet ended, across the cluster
    partition_concurrency: int | None = None  # the same, per partition_key
    rate_limit: str | None = None  # starts per period, in any window of the period
    priority: bool = False  # higher priority values start first

    def __post_init__(self) -> None:
        for what in ("concurrency", "partition_concurrency"):
            value = getattr(self, what)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
        if self.rate_limit is not None:
            parse_rate_limit(self.rate_limit)
        if not isinstance(self.priority, bool):
            raise ValueError(f"priority must be True or False, got {self.priority!r}")

    @property
    def rate(self) -> tuple[int, int] | None:
        return None if self.rate_limit is None else parse_rate_limit(self.rate_limit)

    @property
    def limited(self) -> bool:
        """Whether a start must pass the queue's gate (priority alone orders
        the broker and the wake-ups, it gates nothing)."""
        return bool(self.concurrency or self.partition_concurrency or self.rate_limit)


def check_delay(delay: float | None, debounce: float | None) -> None:
    for what, value in (("delay", delay), ("debounce", debounce)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0
        ):
            raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
