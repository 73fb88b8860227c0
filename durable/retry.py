"""The step retry policy: one frozen value and a pure back-off function."""

from __future__ import annotations

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
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.interval_seconds < 0 or self.max_interval_seconds < 0:
            raise ValueError("interval and max_interval must be >= 0")
        if self.backoff < 1.0:
            raise ValueError(f"backoff must be >= 1.0, got {self.backoff!r}")
        if self.timeout_seconds is not None and self.timeout_seconds <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout_seconds!r}")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def should_retry(self, exc: BaseException, attempts_made: int) -> bool:
        if attempts_made >= self.max_attempts:
            return False
        if isinstance(exc, self.dont_retry_on):
            return False
        return isinstance(exc, self.retry_on)

    def delay_seconds(self, retry_number: int) -> float:
        return backoff_delay_seconds(
            retry_number,
            self.interval_seconds,
            self.backoff,
            self.max_interval_seconds,
            self.random_fraction() if self.jitter else None,
        )


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
