"""The recovery sweeper: the database decides what needs a message.

Every worker runs one (in its main process); they may all sweep at once,
since marking a workflow as dispatched is one conditional UPDATE per row
(SKIP LOCKED on Postgres). A sweep publishes workflows whose timer is due,
who were woken, whose message was lost before a claim, or whose execution
lost its lease; and cancels workflows past their deadline.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any, Callable

from . import metrics
from . import serialization as ser
from .clock import SYSTEM_CLOCK, Clock
from .dispatch import Dispatcher
from .errors import WorkflowTimeoutError
from .fork_guard import no_fork_meanwhile
from .local_processes import owner_pid, process_is_gone, this_host
from .retention import SWEEP_EVERY_MS, SWEEP_MAX_BATCHES, collect_garbage, separate_app_database
from .schedules import Schedule, tick_workflow_id
from .settings import Settings
from .starting import new_workflow_row
from .store import Store

logger = logging.getLogger("durable.recovery")


def sweep_once(
    store: Store, dispatcher: Dispatcher, settings: Settings, now_ms: int,
    expired_leases: bool = True,
) -> int:
    """One sweep; returns how many workflows it published. expired_leases=False
    leaves workflows whose lease expired alone (see Sweeper._loop).

    A publish that fails means the broker is down: the sweep stops
    publishing, and every workflow it had picked is due again at the next
    sweep, so each is published within a sweep of the broker's return."""
    timed_out = store.expire_deadlines(
        now_ms, ser.dumps_error(WorkflowTimeoutError("workflow passed its deadline and was cancelled"))
    )
    for workflow_id in timed_out:
        logger.warning("workflow %s passed its deadline: cancelled", workflow_id)
    due = store.due_for_dispatch(
        now_ms, int(settings.redelivery_seconds * 1000), expired_leases=expired_leases,
        max_backoff_ms=int(settings.redelivery_max_seconds * 1000),
    )
    due = due + held_with_a_free_slot(store, now_ms) + start_due_ticks(store, settings, now_ms)
    published = 0
    for row in due:
        if not dispatcher.publish(row["workflow_id"], row["name"], row["queue"], row["priority"]):
            break
        published += 1
    if published < len(due):
        unpublished = [row["workflow_id"] for row in due[published:]]
        store.dispatch_again_at(unpublished, now_ms)
        logger.warning("broker unavailable: %d workflow(s) left for the next sweep", len(unpublished))
    if published:
        metrics.REPUBLISHED.inc(published)
        logger.info("recovery sweep published %d workflow(s)", published)
    return published


def held_with_a_free_slot(store: Store, now_ms: int) -> list[dict[str, Any]]:
    """Workflows a limited queue held back, for its free slots: the end of
    a workflow of the queue wakes the next at once; this catches a wake-up
    lost with its worker. One query per limited queue."""
    waking: list[dict[str, Any]] = []
    for name, limits in store.queue_limits().items():
        if limits.concurrency is not None or limits.partition_concurrency is not None:
            waking.extend(store.held_to_wake(name, limits, now_ms))
    return waking


def start_due_ticks(store: Store, settings: Settings, now_ms: int) -> list[dict[str, Any]]:
    """Start the due ticks of every schedule (any worker may: a
    compare-and-set on the schedule's next tick lets one win)."""
    started: list[dict[str, Any]] = []
    for row in store.due_schedules(now_ms):
        schedule = Schedule(
            row["name"], row["workflow_name"], row["cron"], row["every_ms"], row["timezone"],
            row["missed"], row["queue"],
        )
        ticks, next_tick = schedule.ticks_due(row["next_tick_ms"], now_ms)
        rows = [tick_row(settings, schedule, tick, now_ms) for tick in ticks]
        started.extend(store.start_ticks(schedule.name, row["next_tick_ms"], next_tick, rows, now_ms))
    return started


def tick_row(settings: Settings, schedule: Schedule, tick_ms: int, now_ms: int) -> dict[str, Any]:
    """A tick's workflow: called with the tick's instant (an aware datetime)."""
    scheduled_at = dt.datetime.fromtimestamp(tick_ms / 1000, tz=dt.timezone.utc)
    return new_workflow_row(
        settings, name=schedule.workflow_name, args=(scheduled_at,), kwargs={},
        workflow_id=tick_workflow_id(schedule.name, tick_ms), queue=schedule.queue,
        clock=_At(now_ms),
    )


class _At:
    """A clock stopped at the sweep's instant, for the rows it builds."""

    def __init__(self, now_ms: int):
        self._now_ms = now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._now_ms / 1000

    def sleep(self, seconds: float) -> None:
        raise RuntimeError("a stopped clock does not sleep")


def reclaim_local_leases(
    store: Store, host: str, now_ms: int,
    is_gone: Callable[[int, int, int], bool] = process_is_gone,
) -> list[str]:
    """Expire at once the leases held by processes of this host that are
    gone (a worker restarted after a SIGKILL or an OOM kill finds its own
    dead executions), instead of waiting for them to run out. Leases of
    other hosts, and of live processes, are left alone."""
    dead = []
    for lease in store.live_leases_of_host(host, now_ms):
        pid = owner_pid(lease["lease_owner"], host)
        if pid is not None and is_gone(pid, lease["lease_expires_at_ms"], now_ms):
            dead.append(lease)
    if not dead:
        return []
    expired = store.expire_leases(dead, "process gone (found by a worker starting on its host)", now_ms)
    logger.warning("expired %d lease(s) of dead processes on this host", len(expired))
    return expired


class Sweeper:
    def __init__(
        self, store: Store, dispatcher: Dispatcher, settings: Settings, clock: Clock = SYSTEM_CLOCK
    ):
        self.clock = clock
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self._next_collection_ms = 0
        self._app_db = separate_app_database(settings) if settings.retention else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="durable-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        # While the database is down no execution can renew its lease, so
        # leases expire although their executions live (and hold finished
        # steps whose checkpoints wait for the database). After an outage,
        # give them one lease period to renew before taking expired leases
        # for lost ones; a really lost execution is recovered that much later.
        #
        # The first sweep runs at once, after expiring the leases of this
        # host's dead processes: a worker restarted after a crash publishes
        # its own lost work (and any lease that ran out while it started)
        # while the rest of the worker starts, not a sweep interval later.
        outage = False
        hold_until = 0.0
        try:
            with no_fork_meanwhile():
                reclaim_local_leases(self.store, this_host(), self.clock.now_ms())
        except Exception as exc:  # noqa: BLE001 - the leases expire by themselves anyway
            logger.warning("could not check this host's leases: %s", exc)
        wait_seconds = 0.0
        while not self._stop.wait(wait_seconds):
            wait_seconds = self.settings.sweep_interval_seconds
            try:
                with no_fork_meanwhile():
                    sweep_once(
                        self.store, self.dispatcher, self.settings, self.clock.now_ms(),
                        expired_leases=self.clock.monotonic() >= hold_until,
                    )
                    self._collect_garbage()
                if outage:
                    outage = False
                    hold_until = self.clock.monotonic() + self.settings.lease_seconds
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                outage = True
                hold_until = float("inf")
                logger.warning("recovery sweep failed: %s", exc)

    def _collect_garbage(self) -> None:
        """Retention: a few batches at most once a minute (DURABLE_RETENTION)."""
        retention = self.settings.retention_seconds
        now = self.clock.now_ms()
        if retention is None or now < self._next_collection_ms:
            return
        self._next_collection_ms = now + SWEEP_EVERY_MS
        deleted = collect_garbage(
            self.store, self._app_db, now - int(retention * 1000), max_batches=SWEEP_MAX_BATCHES
        )
        if deleted:
            logger.info("retention: deleted %d ended workflow(s)", deleted)
