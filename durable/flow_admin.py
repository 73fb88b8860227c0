"""Queues and schedules as an operator sees and steers them (the
management API on `Durable`, and `durable queues` / `durable schedules`)."""

from __future__ import annotations

from typing import Any

from .clock import Clock
from .dispatch import Dispatcher
from .records import datetime_from_ms
from .recovery import tick_row
from .schedules import Schedule
from .settings import Settings
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

    def _known(self, name: str) -> dict[str, Any]:
        for row in self.store.list_schedules():
            if row["name"] == name:
                return row
        raise ValueError(f"no schedule named {name!r} (schedules are written at worker start)")
