"""Schedules in SQL: their definitions, and the compare-and-set that lets
exactly one sweeper start each tick."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, bindparam, select, update

from ..schedules import Schedule
from ..schema import schedules, workflows
from .base import StoreBase
from .prebuilt import Prebuilt

C = schedules.c


class ScheduleSql(StoreBase):
    def __init__(self, database: Any):
        super().__init__(database)
        # asked by the sweeper every second: built once
        self._due_stmt = Prebuilt(database, select(schedules).where(
            C.paused == 0, C.next_tick_ms <= bindparam("now", type_=BigInteger)
        ))
    def upsert_schedule(self, schedule: Schedule, now_ms: int) -> None:
        """The definition in code wins; a changed timing restarts the ticks
        from now; paused stays as the operator left it."""
        definition = dict(
            workflow_name=schedule.workflow_name, cron=schedule.cron, every_ms=schedule.every_ms,
            timezone=schedule.timezone, missed=schedule.missed, queue=schedule.queue,
        )
        with self.db.begin() as conn:
            row = conn.execute(select(schedules).where(C.name == schedule.name)).mappings().first()
            if row is None:
                conn.execute(self._insert(schedules).values(
                    name=schedule.name, next_tick_ms=schedule.next_tick_after(now_ms), paused=0,
                    updated_at_ms=now_ms, **definition,
                ).on_conflict_do_nothing(index_elements=["name"]))
                return
            if all(row[k] == v for k, v in definition.items()):
                return
            values: dict[str, Any] = dict(definition, updated_at_ms=now_ms)
            if (row["cron"], row["every_ms"], row["timezone"]) != (schedule.cron, schedule.every_ms, schedule.timezone):
                values["next_tick_ms"] = schedule.next_tick_after(now_ms)
            conn.execute(update(schedules).where(C.name == schedule.name).values(**values))

    def due_schedules(self, now_ms: int) -> list[dict[str, Any]]:
        return self._due_stmt.all(dict(now=now_ms))

    def start_ticks(
        self, name: str, seen_next_tick_ms: int, next_tick_ms: int, rows: list[dict[str, Any]], now_ms: int
    ) -> list[dict[str, Any]]:
        """Advance the schedule from the tick this sweeper saw and insert its
        tick workflows, in one transaction; another sweeper that advanced it
        first wins, and this one inserts nothing. Returns the rows inserted."""
        inserted = []
        with self.db.begin() as conn:
            won = conn.execute(
                update(schedules)
                .where(C.name == name, C.next_tick_ms == seen_next_tick_ms)
                .values(next_tick_ms=next_tick_ms, updated_at_ms=now_ms)
            ).rowcount == 1
            if not won:
                return []
            for row in rows:
                done = conn.execute(
                    self._insert(workflows).values(**row)
                    .on_conflict_do_nothing(index_elements=["workflow_id"])
                    .returning(workflows.c.workflow_id)
                ).first()
                if done is not None:
                    inserted.append(row)
        return inserted

    def list_schedules(self) -> list[dict[str, Any]]:
        with self.db.begin() as conn:
            return [dict(r) for r in conn.execute(select(schedules).order_by(C.name)).mappings().all()]

    def set_schedule_paused(self, name: str, paused: bool, now_ms: int) -> bool:
        with self.db.begin() as conn:
            return conn.execute(
                update(schedules).where(C.name == name).values(paused=int(paused), updated_at_ms=now_ms)
            ).rowcount == 1
