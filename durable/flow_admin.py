"""Queues, schedules, circuit breakers and retention as an operator sees
and steers them (the management API on `Durable`, and `durable queues`,
`durable schedules`, `durable breakers`, `durable gc`)."""

from __future__ import annotations

from typing import Any, Sequence

from .breakers import CircuitBreaker
from .clock import Clock
from .dispatch import Dispatcher
from .records import TERMINAL_STATUSES, datetime_from_ms
from .recovery import tick_row
from .retention import collect_garbage, separate_app_database
from .schedules import Schedule
from .settings import Settings, parse_duration
from .starting import start_workflow
from .store import Store


class FlowAdmin:
    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings, clock: Clock):
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings
        self.clock = clock

    def list_queues(self) -> list[dict[str, Any]]:
        """Each queue's limits, running count (started, not ended) and backlog (not started)."""
        return self.store.queue_stats()

    def list_schedules(self) -> list[dict[str, Any]]:
        return [
            dict(
                name=r["name"], workflow=r["workflow_name"], cron=r["cron"],
                every_seconds=None if r["every_ms"] is None else r["every_ms"] / 1000,
                timezone=r["timezone"], missed=r["missed"], paused=bool(r["paused"]),
                next_tick=datetime_from_ms(r["next_tick_ms"]),
            )
            for r in self.store.list_schedules()
        ]

    def pause_schedule(self, name: str) -> None:
        self._known(name)
        self.store.set_schedule_paused(name, True, self.clock.now_ms())

    def resume_schedule(self, name: str) -> None:
        self._known(name)
        self.store.set_schedule_paused(name, False, self.clock.now_ms())

    def trigger_schedule(self, name: str) -> str:
        """Run a tick now (its ID: the schedule's name and this instant)."""
        row = self._known(name)
        schedule = Schedule(
            row["name"], row["workflow_name"], row["cron"], row["every_ms"], row["timezone"],
            row["missed"], row["queue"],
        )
        now = self.clock.now_ms()
        return start_workflow(self.store, self.dispatcher, tick_row(self.settings, schedule, now, now),
                              clock=self.clock)

    def list_breakers(self) -> list[dict[str, Any]]:
        return [
            dict(name=r["name"], state=r["state"], open_until=datetime_from_ms(r["open_until_ms"]),
                 failure_threshold=r["failure_threshold"], window_seconds=r["window_ms"] / 1000,
                 reset_timeout_seconds=r["reset_timeout_ms"] / 1000)
            for r in self.store.list_breakers()
        ]

    def steer_breaker(self, name: str, state: str, seconds: float | None = None) -> None:
        """Open a breaker (for `seconds`, default its reset timeout) or close it."""
        known = {r["name"]: r for r in self.store.list_breakers()}
        if name not in known:
            raise ValueError(f"no circuit breaker named {name!r} (breakers are written at worker start)")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        until = None
        if state == "open":
            length_ms = known[name]["reset_timeout_ms"] if seconds is None else int(seconds * 1000)
            until = self.clock.now_ms() + length_ms
        self.store.set_breaker(name, state, until, self.clock.now_ms())

    def gc(self, older_than_seconds: float, statuses: list[str] | None = None) -> int:
        """Delete ended workflows older than this (see retention.py)."""
        if not older_than_seconds > 0:
            raise ValueError(f"older_than must be > 0, got {older_than_seconds!r}")
        for status in statuses or ():
            if status not in TERMINAL_STATUSES:
                raise ValueError(f"status must be one of the ended statuses {TERMINAL_STATUSES}, got {status!r}")
        cutoff = self.clock.now_ms() - int(older_than_seconds * 1000)
        return collect_garbage(self.store, separate_app_database(self.settings), cutoff, statuses)

    def _known(self, name: str) -> dict[str, Any]:
        for row in self.store.list_schedules():
            if row["name"] == name:
                return row
        raise ValueError(f"no schedule named {name!r} (schedules are written at worker start)")


class OperatorCalls:
    """The operator's calls on `Durable` (queues, schedules, breakers,
    retention), over a FlowAdmin."""

    store: Store
    dispatcher: Dispatcher
    settings: Settings
    clock: Clock
    breakers: dict[str, CircuitBreaker]

    def list_queues(self) -> list[dict[str, Any]]:
        return self._flow_admin().list_queues()

    def list_schedules(self) -> list[dict[str, Any]]:
        return self._flow_admin().list_schedules()

    def pause_schedule(self, name: str) -> None:
        self._flow_admin().pause_schedule(name)

    def resume_schedule(self, name: str) -> None:
        self._flow_admin().resume_schedule(name)

    def list_breakers(self) -> list[dict[str, Any]]:
        return self._flow_admin().list_breakers()

    def open_breaker(self, name: str, seconds: float | None = None) -> None:
        """Open a breaker by hand (for `seconds`, default its reset timeout)."""
        self._declared_breaker(name)
        self._flow_admin().steer_breaker(name, "open", seconds)

    def close_breaker(self, name: str) -> None:
        self._declared_breaker(name)
        self._flow_admin().steer_breaker(name, "closed")

    def gc(self, older_than: float | str, status: str | Sequence[str] | None = None) -> int:
        """Delete ended workflows that ended more than `older_than` ago
        (seconds, or a duration such as "7d"), with their steps, messages,
        events and transaction outputs; only those of `status` if given. A
        tree with a running workflow is kept whole. Returns how many went."""
        seconds = parse_duration(older_than, "older_than") if isinstance(older_than, str) else float(older_than)
        statuses = [status] if isinstance(status, str) else list(status) if status is not None else None
        return self._flow_admin().gc(seconds, statuses)

    def _declared_breaker(self, name: str) -> None:
        """A breaker declared here but not written yet (no worker started): write it."""
        if name in self.breakers and name not in {r["name"] for r in self.store.list_breakers()}:
            self.store.upsert_breaker(self.breakers[name], self.clock.now_ms())

    def _flow_admin(self) -> FlowAdmin:
        return FlowAdmin(self.store, self.dispatcher, self.settings, self.clock)
