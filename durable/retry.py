"""Retry and back-off, in one place: the step retry policy (a frozen value),
the pure back-off function, and the `Backoff` every wait loop draws its
pauses from."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class RetryPolicy:
    """`retries=N` allows N retries after the first attempt: N+1 attempts in all."""

    retries: int = 0
    interval_seconds: float = 1.0
    backoff: float = 2.0
    max_interval_seconds: float = 3600.0
    jitter: bool = False
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = ()
    timeout_seconds: float | None = None
    random_fraction: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        for what, value in (("interval", self.interval_seconds), ("max_interval", self.max_interval_seconds)):
            if not _finite(value) or value < 0:
                raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
        if not _finite(self.backoff) or self.backoff < 1.0:
            raise ValueError(f"backoff must be a finite number >= 1.0, got {self.backoff!r}")
        if self.timeout_seconds is not None and (not _finite(self.timeout_seconds) or self.timeout_seconds <= 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {self.timeout_seconds!r}")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def retries_on(self, exc: BaseException) -> bool:
        """This policy retries this kind of error (if attempts are left)."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.dont_retry_on)

    def should_retry(self, exc: BaseException, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts and self.retries_on(exc)

    def delay_seconds(self, retry_number: int) -> float:
        return backoff_delay_seconds(
            retry_number,
            self.interval_seconds,
            self.backoff,
            self.max_interval_seconds,
            self.random_fraction() if self.jitter else None,
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def backoff_delay_seconds(
    retry_number: int,
    interval_seconds: float,
    backoff: float,
    max_interval_seconds: float,
    jitter_fraction: float | None = None,
) -> float:
    """Delay before retry `retry_number` (1-based): min(interval * backoff**(k-1), cap).

    With a jitter fraction in [0, 1) the delay is drawn from the upper half of
    that value ("equal jitter"): it never collapses to zero, and retries from
    many workflows spread out instead of arriving together.
    """
    if retry_number < 1:
        raise ValueError("retry_number is 1-based")
    exponent = retry_number - 1
    try:
        delay = interval_seconds * (backoff**exponent)
    except OverflowError:
        delay = max_interval_seconds
    delay = min(delay, max_interval_seconds)
    if jitter_fraction is not None:
        delay = delay / 2 + delay / 2 * jitter_fraction
    return delay


class Backoff:
    """The pauses of a wait or poll loop: `first_seconds`, then doubling up to
    `max_seconds`, each drawn with equal jitter when `jitter` is set. Every
    loop in durable that waits for something (a database outage, a lock
    conflict, a workflow's outcome, a message) takes its pauses from one."""

    def __init__(
        self,
        first_seconds: float,
        max_seconds: float,
        jitter: bool = False,
        random_fraction: Callable[[], float] = random.random,
    ):
        if first_seconds <= 0 or max_seconds < first_seconds:
            raise ValueError("need 0 < first_seconds <= max_seconds")
        self.first_seconds = first_seconds
        self.max_seconds = max_seconds
        self.jitter = jitter
        self.random_fraction = random_fraction
        self.pauses = 0

    def next_pause(self, remaining_seconds: float | None = None) -> float:
        """The next pause, never longer than `remaining_seconds` (a deadline)."""
        self.pauses += 1
        pause = backoff_delay_seconds(
            self.pauses, self.first_seconds, 2.0, self.max_seconds,
            self.random_fraction() if self.jitter else None,
        )
        if remaining_seconds is not None:
            pause = max(0.0, min(pause, remaining_seconds))
        return pause
