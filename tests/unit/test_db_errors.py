"""Database errors are read by SQLSTATE / result code and driver type."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import psycopg.errors as pg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from durable.database import retry_while_unavailable
from durable.db_errors import DbErrorKind, classify

from .conftest import FakeClock


@pytest.mark.parametrize("error, kind", [
    (pg.SerializationFailure("could not serialize"), DbErrorKind.CONFLICT),
    (pg.DeadlockDetected("deadlock"), DbErrorKind.CONFLICT),
    (pg.AdminShutdown("terminating connection"), DbErrorKind.UNAVAILABLE),
    (pg.CannotConnectNow("the database system is starting up"), DbErrorKind.UNAVAILABLE),
    (pg.lookup("08006")("connection failure"), DbErrorKind.UNAVAILABLE),
    (pg.TooManyConnections("too many clients"), DbErrorKind.UNAVAILABLE),
    (psycopg.OperationalError("connection refused"), DbErrorKind.UNAVAILABLE),
    (pg.UniqueViolation("duplicate key"), DbErrorKind.OTHER),
    (pg.UndefinedTable("relation does not exist"), DbErrorKind.OTHER),
    (pg.SyntaxError("syntax error"), DbErrorKind.OTHER),
    # message text means nothing: only the code does
    (pg.UniqueViolation("server closed the connection unexpectedly"), DbErrorKind.OTHER),
    (ValueError("database is locked"), DbErrorKind.OTHER),
])
def test_postgres_errors_by_sqlstate(error: Exception, kind: DbErrorKind) -> None:
    assert classify(error) is kind
    wrapped = DBAPIError.instance("SELECT 1", None, error, psycopg.Error)
    assert classify(wrapped) is kind


def test_sqlite_errors_by_result_code(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with pytest.raises(OperationalError) as busy:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    assert classify(busy.value) is DbErrorKind.CONFLICT
    with pytest.raises(OperationalError) as wrong:
        with engine.connect() as conn:
            conn.execute(text("SELEC 1"))
    assert classify(wrong.value) is DbErrorKind.OTHER
    holder.rollback()
    engine.dispose()


def test_retry_while_unavailable_waits_out_transient_errors_only() -> None:
    clock = FakeClock()
    failures = [pg.AdminShutdown("restarting"), pg.SerializationFailure("conflict")]

    def operation() -> str:
        if failures:
            raise DBAPIError.instance("UPDATE", None, failures.pop(0), psycopg.Error)
        return "written"

    assert retry_while_unavailable(operation, "a test", clock=clock) == "written"
    assert len(clock.sleeps) == 2 and clock.sleeps[1] > clock.sleeps[0] / 2

    def wrong() -> None:
        raise DBAPIError.instance("INSERT", None, pg.UniqueViolation("dup"), psycopg.Error)

    with pytest.raises(DBAPIError):
        retry_while_unavailable(wrong, "a test", clock=clock)
    assert len(clock.sleeps) == 2  # no wait for an error that will not go away


def test_retry_while_unavailable_gives_up_when_told() -> None:
    clock = FakeClock()

    def down() -> None:
        raise DBAPIError.instance("SELECT", None, psycopg.OperationalError("refused"), psycopg.Error)

    with pytest.raises(DBAPIError):
        retry_while_unavailable(down, "a test", give_up_after_seconds=10, clock=clock)
    assert 10 <= sum(clock.sleeps) < 13
