"""The database's clock, read locally.

Every lease and timer is a time written by one host and compared by
another: a claim decides that a lease expired, a sweep that a timer is due
or a lease lost, a client writes a deadline. If each host used its own
`time.time()`, a host whose clock is a few seconds ahead would see every
live lease as expired and take it over. So every process that shares a
Postgres database reads one clock, the database's: `DatabaseClock` is the
local clock corrected by its offset to the database's, measured with one
small query (`clock_timestamp()`) and measured again every few seconds by a
thread of its own, so reading the time costs no round trip. A measurement
is off by at most half its round trip, and the offset used is that of the
measurement with the shortest round trip among the recent ones.

SQLite is a file on this host: its clock is this host's, offset 0
(`database_clock` hands back the local clock).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from sqlalchemy import text

from ..clock import SYSTEM_CLOCK, Clock
from ..database import Database
from ..fork_guard import no_fork_meanwhile

logger = logging.getLogger("durable.clock")

RESYNC_SECONDS = 5.0
RETRY_SECONDS = 1.0
# measurements older than this no longer compete for the best round trip
SAMPLE_WINDOW_SECONDS = 60.0

_POSTGRES_NOW_MS = text("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")


class DatabaseClock:
    """A `Clock` whose `now_ms` is the database's time.

    `read_db_ms` returns the database's time in milliseconds (one round
    trip); tests give one that answers a time of their choosing."""

    def __init__(
        self,
        read_db_ms: Callable[[], int],
        base: Clock = SYSTEM_CLOCK,
        resync_seconds: float = RESYNC_SECONDS,
    ):
        self._read_db_ms = read_db_ms
        self.base = base
        self.resync_seconds = resync_seconds
        self._offset_ms: int | None = None  # None: never measured
        self._samples: list[tuple[float, int, int]] = []  # (at monotonic, rtt ms, offset ms)
        self._pid = 0  # the process whose measuring thread runs
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._stop = threading.Event()

    # --- Clock ---------------------------------------------------------------

    def now_ms(self) -> int:
        if self._pid != os.getpid():
            self._start_here()
        elif self._offset_ms is None:
            # never measured (the database was down at the first read): try
            # again at each read rather than at the thread's next turn (5 s),
            # so this host's clock, maybe far off, decides no lease once the
            # database answers. A reading taken while it is down is this
            # host's; the query it is for fails too, and is retried.
            try:
                self.measure()
            except Exception as exc:  # noqa: BLE001 - this host's clock meanwhile
                logger.debug("could not read the database's clock: %s", exc)
        return self.base.now_ms() + (self._offset_ms or 0)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)

    # --- the offset ----------------------------------------------------------

    @property
    def offset_ms(self) -> int | None:
        """Database time minus local time, as last measured (None: not yet)."""
        return self._offset_ms

    def measure(self) -> int:
        """One measurement; returns the offset now in use. Raises what the
        query raised (the offset in use is kept)."""
        with no_fork_meanwhile():  # the worker's main process forks children
            before_ms, before = self.base.now_ms(), self.base.monotonic()
            db_ms = self._read_db_ms()
            after_ms, after = self.base.now_ms(), self.base.monotonic()
        rtt_ms = max(0, int(round((after - before) * 1000)))
        # the database read its clock somewhere within the round trip: assume the middle
        offset = db_ms - (before_ms + after_ms) // 2
        samples = [s for s in self._samples if after - s[0] <= SAMPLE_WINDOW_SECONDS]
        samples.append((after, rtt_ms, offset))
        self._samples = samples[-12:]
        best = min(self._samples, key=lambda s: (s[1], -s[0]))
        if self._offset_ms is None or abs(best[2] - self._offset_ms) >= 1000:
            logger.info("database clock is %+d ms from this host's (round trip %d ms)", best[2], best[1])
        self._offset_ms = best[2]
        return best[2]

    def _start_here(self) -> None:
        """First read in this process (or after fork): measure at once when
        nothing was ever measured, then keep measuring in a thread."""
        # the fork guard first, as every caller in a worker's main process
        # holds it already: one order of the two locks, no deadlock
        with no_fork_meanwhile(), self._lock_for_this_process():
            if self._pid == os.getpid():
                return
            if self._offset_ms is None:
                try:
                    self.measure()
                except Exception as exc:  # noqa: BLE001 - the thread measures again soon
                    logger.warning("could not read the database's clock (using this host's): %s", exc)
            self._stop = threading.Event()
            threading.Thread(target=self._loop, args=(self._stop,), name="durable-db-clock", daemon=True).start()
            self._pid = os.getpid()

    def _lock_for_this_process(self) -> threading.Lock:
        # a lock another thread held at fork stays held in the child: one per process
        pid = os.getpid()
        if self._lock_pid != pid:
            self._lock = threading.Lock()
            self._lock_pid = pid
        return self._lock

    def _loop(self, stop: threading.Event) -> None:
        pause = self.resync_seconds
        while not stop.wait(pause):
            try:
                self.measure()
                pause = self.resync_seconds
            except Exception as exc:  # noqa: BLE001 - keep the last offset, try again soon
                logger.debug("could not read the database's clock: %s", exc)
                pause = min(RETRY_SECONDS, self.resync_seconds)

    def stop(self) -> None:
        """Stop this process's measuring thread (tests)."""
        self._stop.set()


def read_postgres_ms(db: Database) -> Callable[[], int]:
    def read() -> int:
        with db.engine.connect() as conn:
            return int(conn.execute(_POSTGRES_NOW_MS).scalar_one())

    return read


def database_clock(db: Database, base: Clock = SYSTEM_CLOCK) -> Clock:
    """The clock every lease and timer of `db` is read with: the database's
    (Postgres), or this host's (SQLite, a file on this host)."""
    if db.is_sqlite:
        return base
    return DatabaseClock(read_postgres_ms(db), base)
