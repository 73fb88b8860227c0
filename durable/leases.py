"""Keeps the leases of running executions alive.

In a prefork worker the worker's main process renews them
(`ChildLeaseRenewer`): it runs no user code, so a step that holds the GIL
in a C call (a regex, numpy, a C extension) for longer than the lease
cannot starve the renewal, and it knows which of its pool children are
alive. Every lease_seconds / 3 it extends, in one UPDATE, the leases that
its live children hold on the workflows it handed them. A child that dies
is no longer renewed for (and is reported at once by the pool watch); a
whole worker that dies renews nothing, and its leases run out.

Where there is no parent process (the threads or solo pool, or a runner
driven by hand), `LeaseKeeper` renews from a daemon thread of the process
that runs the executions (started lazily, re-started after fork), with a
lease long enough that a GIL-holding call does not lose it
(`in_process_lease_seconds` in a worker). A process that freezes (SIGSTOP)
stops renewing, its lease expires, and the sweeper hands the workflow to
another worker; the frozen execution is then fenced out by the epoch when
it wakes.

A lease that was not renewed is reported only if its execution still runs
and another execution took the workflow over (or it was cancelled): an
execution that ended or suspended the workflow while the renewal was under
way lost nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Collection

from .clock import SYSTEM_CLOCK, Clock
from .dispatch import process_owner
from .fork_guard import no_fork_meanwhile_within
from .records import Status
from .store import Store

logger = logging.getLogger("durable.leases")


class LeaseKeeper:
    """Renews, from a thread of this process, the leases its executions hold;
    or only keeps count of them when the worker's main process renews
    (`renewed_by_parent`)."""

    def __init__(self, store: Store, lease_seconds: float, clock: Clock = SYSTEM_CLOCK):
        self.store = store
        self.clock = clock
        # the lease an execution here takes and keeps (the claim's length)
        self.lease_seconds = lease_seconds
        # how often the thread renews: a third of the configured lease, even
        # when the lease kept in-process is longer
        self.interval_seconds = lease_seconds / 3
        # set in a prefork worker's main process before it forks: its
        # children leave their leases to it and start no thread
        self.renewed_by_parent = False
        self._epochs: dict[str, int] = {}
        self._owner = ""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def keep_in_process(self, lease_seconds: float) -> None:
        """No parent renews here (threads or solo pool): take and keep leases
        at least `lease_seconds` long, renewed every interval_seconds."""
        self.renewed_by_parent = False
        self.lease_seconds = max(self.lease_seconds, lease_seconds)

    def holds(self, workflow_id: str) -> bool:
        """Whether an execution in this process runs `workflow_id` now."""
        with self._lock:
            return workflow_id in self._epochs

    def track(self, workflow_id: str, epoch: int, owner: str) -> None:
        with self._lock:
            self._epochs[workflow_id] = epoch
            self._owner = owner
        if not self.renewed_by_parent:
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
        while True:
            self._wake.wait(self.interval_seconds)
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


class ChildLeaseRenewer:
    """In a prefork worker's main process: every lease_seconds / 3, one UPDATE
    extends the leases held by its live pool children.

    `children()` gives the pids of the pool's children that have not been
    reaped, `workflows()` the workflows whose messages the worker holds
    (received or running). A lease is extended only when both match: a
    workflow this worker handed out, held by one of its live children. A
    child that died is reaped (and dropped from `children()`) before its
    death is reported and its lease expired; the renewal reads both, and
    writes, inside `no_fork_meanwhile()`, as that report does, so it never
    extends a lease the report just expired (unless, on Postgres, another
    thread held the guard past a sixth of a lease: see `renew_once`).
    """

    def __init__(
        self,
        store: Store,
        lease_seconds: float,
        clock: Clock,
        children: Callable[[], Collection[int]],
        workflows: Callable[[], Collection[str]],
        owner_of: Callable[[int], str] = process_owner,
    ):
        self.store = store
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.children = children
        self.workflows = workflows
        self.owner_of = owner_of
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unguarded = False  # the last renewal went ahead without the fork guard

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="durable-child-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.renew_once()
                if failing:
                    logger.info("renewing pool children's leases again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - retried next interval
                if not failing:
                    logger.warning("could not renew pool children's leases: %s", exc)
                failing = True

    def renew_once(self) -> int:
        """Renew now; returns how many leases were extended."""
        # No fork while inside the driver, and the lost-child report waits.
        # Another thread may hold the guard for long (the sweeper, whose
        # publish a broker outage holds up): on Postgres the renewal then
        # goes ahead unguarded after a sixth of a lease, since a child forked
        # meanwhile opens connections of its own and shares no driver mutex.
        # On SQLite, whose process-wide mutexes a child would inherit, it waits.
        wait = None if self.store.db.is_sqlite else self.lease_seconds / 6
        with no_fork_meanwhile_within(wait) as guarded:
            if not guarded and not self._unguarded:
                logger.warning("renewing pool children's leases without waiting for another thread's "
                               "database or broker call (over %.2f s)", wait)
            self._unguarded = not guarded
            owners = {self.owner_of(pid) for pid in self.children()}
            workflow_ids = set(self.workflows())
            if not owners or not workflow_ids:
                return 0
            until_ms = self.clock.now_ms() + int(self.lease_seconds * 1000)
            return self.store.renew_leases_of(workflow_ids, owners, until_ms)
