"""Circuit breakers shared by every worker and host (`dur.circuit_breaker`).

A breaker's state is a database row: closed (calls go through; failures of
steps bound to it are counted within `window`), open until an instant
(steps bound to it raise CircuitOpenError without being called; a step with
retries waits for the reset as a database timer), then half-open: exactly
one attempt across the pool is let through as a probe (arbitrated in the
database); its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CircuitBreaker:
    name: str
    failure_threshold: int = 5
    window_ms: int = 60_000
    reset_timeout_ms: int = 30_000

    @classmethod
    def of(cls, name: str, failure_threshold: int, window: float, reset_timeout: float) -> "CircuitBreaker":
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be an integer >= 1, got {failure_threshold!r}")
        for what, value in (("window", window), ("reset_timeout", reset_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
        return cls(name, failure_threshold, int(window * 1000), int(reset_timeout * 1000))


# What the database answers before an attempt of a step bound to a breaker.
PROCEED = "proceed"  # closed
PROBE = "probe"  # half-open, and this attempt is the one probe
OPEN = "open"  # do not call
