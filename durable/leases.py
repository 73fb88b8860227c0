"""Keeps the leases of the executions running in this process alive.

One daemon thread per process (started lazily, re-started after fork)
renews every lease this process holds each lease_seconds / 3. A process
that freezes (SIGSTOP, a stuck C call holding the GIL) stops renewing, its
lease expires, and the sweeper hands the workflow to another worker; the
frozen execution is then fenced out by the epoch when it wakes.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .store import Store

logger = logging.getLogger("durable.leases")


class LeaseKeeper:
    def __init__(self, store: Store, lease_seconds: float):
        self.store = store
        self.lease_seconds = lease_seconds
        self._epochs: dict[str, int] = {}
        self._owner = ""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def track(self, workflow_id: str, epoch: int, owner: str) -> None:
        with self._lock:
            self._epochs[workflow_id] = epoch
            self._owner = owner
        self._ensure_thread()

    def untrack(self, workflow_id: str) -> None:
        with self._lock:
            self._epochs.pop(workflow_id, None)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="durable-lease-keeper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            self._wake.wait(interval)
            with self._lock:
                epochs = dict(self._epochs)
                owner = self._owner
            if not epochs:
                continue
            try:
                until_ms = int((time.time() + self.lease_seconds) * 1000)
                lost = self.store.renew_leases(owner, epochs, until_ms)
                for workflow_id in lost:
                    logger.warning("lease on workflow %s was taken over or ended", workflow_id)
            except Exception as exc:  # noqa: BLE001 - retried next interval
                logger.warning("could not renew leases: %s", exc)
