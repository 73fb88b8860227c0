"""Postgres: hearing that workflows ended, without polling.

Every workflow's end notifies `ENDED_CHANNEL` with its ID, in the ending
transaction (a trigger, see `schema.py`). A process that waits for results
keeps one connection that LISTENs on it, read by one thread, which wakes
whoever waits for the workflow named. A notification can still be missed
(the connection dropped and came back): every reconnection wakes every
waiter to check again, and waiters keep a slow poll as a safety net.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from ..database import Database
from ..retry import Backoff
from ..schema import ENDED_CHANNEL

logger = logging.getLogger("durable.listen")

Wake = Callable[[], None]

# How long one read of notifications blocks before the thread looks up
# whether it should stop.
_READ_SECONDS = 1.0
# With nobody waiting this long, the connection is closed and the thread
# ends (the next wait starts them again).
IDLE_SECONDS = 60.0


class EndedListener:
    """One LISTEN connection and its thread, for one database in one
    process; started by the first subscription."""

    def __init__(self, db: Database):
        self.db = db
        self._waiters: dict[str, set[Wake]] = {}
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._idle_since = time.monotonic()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def subscribe(self, workflow_id: str, wake: Wake) -> Callable[[], None]:
        """Call `wake` (from the listener's thread: it must be quick) each time
        `workflow_id` is heard to end, or when a notification may have been
        missed. Returns the unsubscribe function."""
        with self._lock:
            self._ensure_thread()
            self._waiters.setdefault(workflow_id, set()).add(wake)

        def unsubscribe() -> None:
            with self._lock:
                wakes = self._waiters.get(workflow_id)
                if wakes is not None:
                    wakes.discard(wake)
                    if not wakes:
                        del self._waiters[workflow_id]
                if not self._waiters:
                    self._idle_since = time.monotonic()

        return unsubscribe

    def wait_listening(self, timeout_seconds: float) -> bool:
        """True once the connection LISTENs: a workflow that ends from then on
        is heard. Follows a thread started meanwhile (by this caller's
        subscription or another's), which comes with an Event of its own."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            if self._listening.wait(max(0.0, min(remaining, 0.05))):
                return True
            if remaining <= 0:
                return False

    def stop(self) -> None:
        self._stop.set()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        # none yet, ended when idle, inherited through fork (no thread came
        # along), or it died
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop, self._listening), name="durable-ended-listener", daemon=True,
        )
        self._thread.start()

    def _idle(self) -> bool:
        """Nobody waited for IDLE_SECONDS: this thread stops (decided under
        the lock, so a new subscriber starts a new one)."""
        with self._lock:
            if self._waiters or time.monotonic() - self._idle_since < IDLE_SECONDS:
                return False
            self._thread = None
            return True

    def _run(self, stop: threading.Event, listening: threading.Event) -> None:
        backoff = Backoff(0.1, 5.0, jitter=True)
        while not stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {ENDED_CHANNEL}")
                    listening.set()
                    backoff = Backoff(0.1, 5.0, jitter=True)
                    self._wake_all()  # anything may have ended while nobody listened
                    while not stop.is_set():
                        for notification in conn.notifies(timeout=_READ_SECONDS):
                            self._wake(notification.payload)
                        if self._idle():
                            stop.set()
            except Exception as exc:  # noqa: BLE001 - reconnect; waiters poll meanwhile
                if listening.is_set() and not stop.is_set():
                    logger.warning("LISTEN %s: connection lost (reconnecting): %s", ENDED_CHANNEL, exc)
                listening.clear()
                stop.wait(backoff.next_pause())
        listening.clear()

    def _connect(self) -> Any:
        import psycopg

        engine = self.db.engine
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(*args, **kwargs, autocommit=True)

    def _wake(self, workflow_id: str) -> None:
        with self._lock:
            wakes = list(self._waiters.get(workflow_id, ()))
        _call_each(wakes)

    def _wake_all(self) -> None:
        with self._lock:
            wakes = [w for ws in self._waiters.values() for w in ws]
        _call_each(wakes)


def _call_each(wakes: list[Wake]) -> None:
    for wake in wakes:
        try:
            wake()
        except Exception:  # noqa: BLE001 - an event loop closed meanwhile: its waiter is gone
            logger.debug("a waiter could not be woken", exc_info=True)
