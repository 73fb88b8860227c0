"""Statements built once with named bind parameters and compiled once for the
database's driver.

The statements on every workflow's path (start, claim, checkpoint, end) are
each atomic by themselves. On Postgres they run in autocommit straight on the
driver's connection: one round trip each, and none of SQLAlchemy's per-call
work (building the statement, its cache key, parameter and result
processing), which costs more than the round trip. SQLite, and any statement
run inside a caller's transaction, goes through SQLAlchemy as usual.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql.selectable import ExecutableReturnsRows

from ..database import Database


class Prebuilt:
    """A statement that returns rows (SELECT, or a write with RETURNING)."""

    def __init__(self, db: Database, statement: ExecutableReturnsRows):
        self.db = db
        self.statement = statement
        self._compiled: tuple[str, dict[str, Any]] | None = None
        self._names: list[str] | None = None

    def first(self, params: dict[str, Any], conn: Connection | None = None) -> dict[str, Any] | None:
        rows = self._run(params, conn, first=True)
        return rows[0] if rows else None

    def all(self, params: dict[str, Any], conn: Connection | None = None) -> list[dict[str, Any]]:
        return self._run(params, conn, first=False)

    def _run(self, params: dict[str, Any], conn: Connection | None, first: bool) -> list[dict[str, Any]]:
        if conn is not None:
            return _rows(conn.execute(self.statement, params), first)
        if self.db.is_sqlite:
            with self.db.begin() as c:
                return _rows(c.execute(self.statement, params), first)
        sql, constants = self._driver_sql()
        with self.db.driver_cursor() as cursor:
            cursor.execute(sql, {**constants, **params})
            if self._names is None:  # building the description costs ~5 us a column
                self._names = [d[0] for d in cursor.description]
            found = [cursor.fetchone()] if first else cursor.fetchall()
            return [dict(zip(self._names, row)) for row in found if row is not None]

    def prepare(self) -> None:
        """Compile it now rather than on its first use (Postgres; on
        SQLite it runs through SQLAlchemy, which caches its own)."""
        if not self.db.is_sqlite:
            self._driver_sql()

    def _driver_sql(self) -> tuple[str, dict[str, Any]]:
        """The SQL text in the driver's parameter style, and the values of the
        statement's own literals (statuses and the like)."""
        if self._compiled is None:
            compiled = self.statement.compile(dialect=self.db.engine.dialect)
            if "POSTCOMPILE" in compiled.string:
                raise ValueError(f"cannot prebuild a statement with expanding IN: {compiled.string}")
            self._compiled = (compiled.string, dict(compiled.params))
        return self._compiled


def _rows(result: CursorResult[Any], first: bool) -> list[dict[str, Any]]:
    if not result.returns_rows:
        return []
    mappings = result.mappings()
    found = [mappings.first()] if first else mappings.all()
    return [dict(row) for row in found if row is not None]
