"""DatabaseClock when the database could not be read at first."""

from __future__ import annotations

from durable.store.db_clock import DatabaseClock

AHEAD_MS = 120_000


class AheadClock:
    """This host's clock, 2 minutes ahead of the database's."""

    def __init__(self) -> None:
        self.ms = 1_000_000 + AHEAD_MS
        self.mono = 10.0

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
        self.mono += seconds


def test_a_clock_never_measured_measures_before_answering_once_the_database_is_back():
    """A worker that starts while Postgres is down cannot measure the offset
    and reads its own clock meanwhile. Once the database answers, the next
    reading must be the database's time, not this host's until the
    measuring thread's next try (5 s later): in those seconds a host 2
    minutes ahead took live leases as expired and counted recoveries (chaos
    run on RabbitMQ, seed 15002: a clock-ahead worker started during a
    Postgres restart)."""
    base = AheadClock()
    down = True

    def read_db_ms() -> int:
        if down:
            raise ConnectionRefusedError("the database is down")
        return base.ms - AHEAD_MS

    clock = DatabaseClock(read_db_ms, base, resync_seconds=3600)  # the thread does not measure here
    try:
        assert clock.now_ms() == base.ms  # nothing measured: this host's clock
        assert clock.offset_ms is None
        down = False
        assert clock.now_ms() == base.ms - AHEAD_MS
        assert clock.offset_ms == -AHEAD_MS
    finally:
        clock.stop()
