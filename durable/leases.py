"""Keeps the leases of the executions running in this process alive.

One daemon thread per process (started lazily, re-started after fork)
renews every lease this process holds each lease_seconds / 3. A process
that freezes (SIGSTOP, a stuck C call holding the GIL) stops renewing, its
lease expires, and the sweeper hands the workflow to another worker; the
frozen execution is then fenced out by the epoch when it wakes.

A lease that was not renewed is reported only if its execution still runs
and another execution took the workflow over (or it was cancelled): an
execution that ended or suspended the workflow while the renewal was under
way lost nothing.
"""

from __future__ import annotations

import logging
import os
import threading

from .clock import SYSTEM_CLOCK, Clock
from .records import Status
from .store import Store

logger = logging.getLogger("durable.leases")


class LeaseKeeper:
    def __init__(self, store: Store, lease_seconds: float, clock: Clock = SYSTEM_CLOCK):
        self.store = store
        self.clock = clock
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
        with self._lock:  # executions on a threads pool track at once: one keeper
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="durable-lease-keeper", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            self._wake.wait(interval)
            try:
                self.renew_once()
            except Exception as exc:  # noqa: BLE001 - retried next interval
                logger.warning("could not renew leases: %s", exc)

    def renew_once(self, now_ms: int | None = None) -> set[str]:
        """Renew every lease this process holds; log and return the workflows
        whose running execution lost its lease."""
        with self._lock:
            epochs = dict(self._epochs)
            owner = self._owner
        if not epochs:
            return set()
        now = self.clock.now_ms() if now_ms is None else now_ms
        until_ms = now + int(self.lease_seconds * 1000)
        not_renewed = self.store.renew_leases(owner, epochs, until_ms)
        lost = set()
        for workflow_id in sorted(not_renewed):
            why = self._why_lost(workflow_id, epochs[workflow_id])
            if why is not None:
                lost.add(workflow_id)
                level = logging.INFO if why == "cancelled" else logging.WARNING
                logger.log(level, "execution of workflow %s lost its lease: %s", workflow_id, why)
        return lost

    def _why_lost(self, workflow_id: str, epoch: int) -> str | None:
        """Why a lease was not renewed, or None when nothing was lost: the
        execution itself ended or suspended the workflow after the epochs
        were read (it has untracked it, or is about to)."""
        with self._lock:
            if self._epochs.get(workflow_id) != epoch:
                return None
        row = self.store.workflow_row(workflow_id)
        if row is None:
            return "deleted"
        if row["lease_epoch"] != epoch:
            return "taken over by another execution"
        if row["status"] == Status.CANCELLED.value:
            return "cancelled"
        return None
