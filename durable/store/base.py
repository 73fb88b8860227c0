"""What every part of the store shares: the engine, the dialect's INSERT
(for ON CONFLICT), inserting a workflow row, reading a workflow's steps and
waking a workflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..database import Database
from ..records import ACTIVE_STATUSES
from ..schema import steps, workflows
from .prebuilt import Prebuilt

W = workflows.c
S = steps.c

# How often an insert refused for a dedup key whose holder then ended (so
# the key is free) is tried again before it gives up.
_DEDUP_ATTEMPTS = 3


@dataclass(frozen=True)
class StartResult:
    created: bool
    workflow_id: str  # the new workflow, or the existing one with that ID


def insert_params(row: dict[str, Any]) -> dict[str, Any]:
    """A new row's bound values, named v_<column>; a NULL column is left out
    (it is NULL by default), so the statement sends only what the row has."""
    return {f"v_{k}": v for k, v in row.items() if v is not None}


class DedupConflict(Exception):
    def __init__(self, holder_workflow_id: str | None):
        self.holder_workflow_id = holder_workflow_id


class StoreBase:
    def __init__(self, database: Database):
        self.db = database
        self._insert = sqlite.insert if database.is_sqlite else postgresql.insert
        self._inserts: dict[tuple[str, ...], Prebuilt] = {}
        self._steps_stmt = Prebuilt(
            database, select(steps).where(S.workflow_id == bindparam("wid")).order_by(S.step_id)
        )

    def insert_workflow(self, row: dict[str, Any], conn: Connection | None = None) -> StartResult:
        """Insert a workflow; an existing ID returns that workflow instead, a held
        dedup key raises DedupConflict naming its holder. Both are decided by
        constraints. Inside `conn` (a caller's transaction) the holder is looked
        up in that transaction: a second one would wait for this one's lock
        (SQLite) and the insert would never end. A holder that ended between
        the insert and the look-up freed the key: the insert is tried again."""
        params = insert_params(row)
        insert_row = self._insert_statement(tuple(sorted(k[2:] for k in params)))
        refused = 0
        while True:
            try:
                if conn is not None:
                    with conn.begin_nested():
                        inserted = insert_row.first(params, conn)
                else:
                    inserted = insert_row.first(params)
            except IntegrityError:
                refused += 1
                holder = self.dedup_holder(row["queue"], row["dedup_key"], conn)
                if holder is None and refused < _DEDUP_ATTEMPTS:
                    continue
                raise DedupConflict(holder) from None
            return StartResult(created=inserted is not None, workflow_id=row["workflow_id"])

    def _insert_statement(self, columns: tuple[str, ...]) -> Prebuilt:
        """One prebuilt INSERT per set of columns (start() always gives the same)."""
        prebuilt = self._inserts.get(columns)
        if prebuilt is None:
            # RETURNING, not rowcount: SQLAlchemy does not promise an INSERT's rowcount on every driver
            stmt = (
                self._insert(workflows)
                .values({c: bindparam(f"v_{c}", type_=W[c].type) for c in columns})
                .on_conflict_do_nothing(index_elements=["workflow_id"])
                .returning(W.workflow_id)
            )
            prebuilt = self._inserts[columns] = Prebuilt(self.db, stmt)
        return prebuilt

    def dedup_holder(
        self, queue: str, dedup_key: str | None, conn: Connection | None = None
    ) -> str | None:
        """The active workflow holding this dedup key (inside `conn` if given)."""
        query = select(W.workflow_id).where(
            W.queue == queue, W.dedup_key == dedup_key, W.status.in_(ACTIVE_STATUSES)
        )
        if conn is not None:
            holder: str | None = conn.execute(query).scalar()
            return holder
        with self.db.begin() as own:
            holder = own.execute(query).scalar()
            return holder

    def steps_of(self, workflow_id: str, conn: Connection | None = None) -> dict[int, dict[str, Any]]:
        """A workflow's step rows by step_id, in one query."""
        return {r["step_id"]: r for r in self._steps_stmt.all(dict(wid=workflow_id), conn)}

    @staticmethod
    def _wake(conn: Connection, workflow_id: str, now_ms: int) -> None:
        conn.execute(
            update(workflows)
            .where(W.workflow_id == workflow_id, W.status.in_(ACTIVE_STATUSES))
            .values(redispatch_at_ms=now_ms)
        )
