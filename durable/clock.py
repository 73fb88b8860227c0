"""The clock the engine reads and sleeps on. Tests hand the engine a clock
they drive by hand, so no test patches `time`."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time in milliseconds since the epoch (stored in rows)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for timeouts measured here."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
