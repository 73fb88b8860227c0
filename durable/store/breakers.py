"""Circuit breakers in SQL: one row per breaker, changed under its row lock."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update

from ..breakers import OPEN, PROBE, PROCEED, CircuitBreaker
from ..schema import breakers
from .base import StoreBase

B = breakers.c


class BreakerSql(StoreBase):
    def upsert_breaker(self, breaker: CircuitBreaker, now_ms: int) -> None:
        definition = dict(
            failure_threshold=breaker.failure_threshold, window_ms=breaker.window_ms,
            reset_timeout_ms=breaker.reset_timeout_ms, updated_at_ms=now_ms,
        )
        stmt = self._insert(breakers).values(name=breaker.name, state="closed", failures="[]", **definition)
        with self.db.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=definition))

    def breaker_before(self, breaker: CircuitBreaker, token: str, now_ms: int) -> tuple[str, int | None]:
        """May this attempt call the function? (PROCEED, None), (PROBE,
        None), or (OPEN, when to look again)."""
        with self.db.begin() as conn:
            row = conn.execute(select(B.state, B.open_until_ms, B.probe_owner).where(B.name == breaker.name)).first()
            if row is None or row.state == "closed":
                return PROCEED, None
            if row.state == "half_open" and row.probe_owner == token:
                return PROBE, None  # the probe itself, run again after a crash
            if row.open_until_ms is not None and now_ms < row.open_until_ms:
                return OPEN, int(row.open_until_ms)
            # open past its reset, or a half-open probe that never reported
            # (its worker died): one attempt wins the probe
            took = conn.execute(
                update(breakers)
                .where(B.name == breaker.name, B.state == row.state, B.probe_owner.is_not_distinct_from(row.probe_owner),
                       B.open_until_ms.is_not_distinct_from(row.open_until_ms))
                .values(state="half_open", probe_owner=token, open_until_ms=now_ms + breaker.reset_timeout_ms,
                        updated_at_ms=now_ms)
            ).rowcount == 1
            return (PROBE, None) if took else (OPEN, now_ms + breaker.reset_timeout_ms)

    def breaker_after(self, breaker: CircuitBreaker, token: str, succeeded: bool, now_ms: int) -> None:
        """Count an attempt's outcome: a probe closes or reopens the breaker;
        failures within the window past the threshold open it."""
        with self.db.begin() as conn:
            row = conn.execute(
                select(B.state, B.probe_owner, B.failures).where(B.name == breaker.name).with_for_update()
            ).first()
            if row is None:
                if succeeded:
                    return
                conn.execute(self._insert(breakers).values(
                    name=breaker.name, state="closed", failures="[]", failure_threshold=breaker.failure_threshold,
                    window_ms=breaker.window_ms, reset_timeout_ms=breaker.reset_timeout_ms, updated_at_ms=now_ms,
                ).on_conflict_do_nothing(index_elements=["name"]))
                row = conn.execute(
                    select(B.state, B.probe_owner, B.failures).where(B.name == breaker.name).with_for_update()
                ).first()
                assert row is not None
            if row.state == "half_open" and row.probe_owner == token:
                values: dict[str, Any] = (
                    dict(state="closed", failures="[]", open_until_ms=None, probe_owner=None) if succeeded
                    else dict(state="open", open_until_ms=now_ms + breaker.reset_timeout_ms, probe_owner=None)
                )
            elif succeeded or row.state != "closed":
                return  # a success while closed changes nothing; late reports while open are moot
            else:
                recent = [t for t in json.loads(row.failures or "[]") if t > now_ms - breaker.window_ms]
                recent = (recent + [now_ms])[-breaker.failure_threshold:]
                values = dict(failures=json.dumps(recent))
                if len(recent) >= breaker.failure_threshold:
                    values.update(state="open", open_until_ms=now_ms + breaker.reset_timeout_ms)
            conn.execute(update(breakers).where(B.name == breaker.name).values(updated_at_ms=now_ms, **values))

    def list_breakers(self) -> list[dict[str, Any]]:
        with self.db.begin() as conn:
            return [dict(r) for r in conn.execute(select(breakers).order_by(B.name)).mappings().all()]

    def set_breaker(self, name: str, state: str, open_until_ms: int | None, now_ms: int) -> bool:
        """An operator opens (until an instant) or closes a breaker."""
        with self.db.begin() as conn:
            return conn.execute(
                update(breakers).where(B.name == name).values(
                    state=state, open_until_ms=open_until_ms, probe_owner=None, failures="[]", updated_at_ms=now_ms,
                )
            ).rowcount == 1
