"""Driver connections kept between autocommit statements
(durable/parked_connections.py), against a real Postgres: reused by the
next statement, never by a forked child, and a connection the server
ended is dropped, and with it every other parked one."""

from __future__ import annotations

import os

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from durable.database import Database


def _backend_pid(db: Database) -> int:
    with db.driver_cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
        return int(pid)


def _parked_pids(db: Database) -> list[int]:
    return [fairy.driver_connection.info.backend_pid for fairy, _cursor, _at in db._parked._parked]


@pytest.fixture
def db(create_pg_database) -> Database:
    database = Database(create_pg_database("parked"), auto_migrate=True)
    yield database
    database.dispose()


def test_the_next_statement_runs_on_the_parked_connection(db: Database) -> None:
    first = _backend_pid(db)
    assert _backend_pid(db) == first
    with db.pinned():  # an execution's pin takes the parked one too, and parks it again
        assert _backend_pid(db) == first
    assert _backend_pid(db) == first


def test_no_more_than_a_few_are_kept_idle(db: Database) -> None:
    held = [db.driver_cursor() for _ in range(db._parked.keep + 3)]
    for cm in held:
        cm.__enter__()
    for cm in held:
        cm.__exit__(None, None, None)
    assert len(db._parked._parked) == db._parked.keep
    assert db.autocommit_engine.pool.checkedout() == db._parked.keep


def test_once_a_connection_is_found_lost_no_parked_one_is_used_again(db: Database) -> None:
    held = [db.driver_cursor() for _ in range(3)]
    for cm in held:
        cm.__enter__()
    for cm in held:
        cm.__exit__(None, None, None)
    parked = _parked_pids(db)
    assert len(set(parked)) == 3
    with psycopg.connect(db.url.replace("+psycopg", ""), autocommit=True) as admin:
        # as a server restart would: every connection ends (with a timeout,
        # pg_terminate_backend returns once the backend is gone, PG 14+)
        for pid in parked:
            assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone() == (True,)
    with pytest.raises(DBAPIError) as raised:
        _backend_pid(db)
    assert raised.value.connection_invalidated
    assert not set(parked) & {_backend_pid(db)}  # the next statement works at once, on a fresh one
    assert db._parked._parked and all(pid not in parked for pid in _parked_pids(db))


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(db: Database) -> None:
    parent = _backend_pid(db)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.write(write, str(_backend_pid(db)).encode())
            db.dispose()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    seen = os.read(read, 64)
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(seen) != parent
    assert _backend_pid(db) == parent  # the parent's connection still works, still parked
