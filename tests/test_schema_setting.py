"""Auto-migration is a setting (issue 15, item 13): on for SQLite, off by
default on Postgres, where `durable migrate` runs once and every other
process only checks the schema (no DDL, no session lock: it works behind
pgbouncer's transaction pooling); the migration lock has a timeout; a
process whose code is older than the schema says so."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import create_engine, event, inspect, text

from durable import DurableClient, Settings
from durable.cli import main as cli_main
from durable.database import SYSTEM_TABLES, VERSION_TABLE, Database
from durable.errors import SchemaError


@pytest.fixture(autouse=True)
def defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults a deployment gets: tests/conftest.py turns auto-migration on."""
    monkeypatch.delenv("DURABLE_AUTO_MIGRATE", raising=False)


@pytest.fixture
def pg_url(create_pg_database: Callable[[str], str]) -> str:
    return create_pg_database("schema")


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _set_revision(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def _statements(database: Database) -> list[str]:
    seen: list[str] = []
    for engine in (database.engine, database.autocommit_engine):
        event.listen(engine, "before_cursor_execute",
                     lambda conn, cursor, statement, *rest: seen.append(statement))
    return seen


def test_postgres_does_not_migrate_by_default_and_says_what_to_run(pg_url: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client = DurableClient(settings=Settings(home=str(tmp_path), database_url=pg_url))
    with pytest.raises(SchemaError, match="do not exist.*durable migrate"):
        client.list_workflows()
    with pytest.raises(SchemaError, match="durable migrate"):
        client.enqueue("anything")
    assert not any(t.startswith("durable") for t in _tables(pg_url))  # nothing created

    monkeypatch.setenv("DURABLE_DATABASE_URL", pg_url)
    monkeypatch.setenv("DURABLE_HOME", str(tmp_path))
    assert cli_main(["migrate"]) == 0

    fresh = DurableClient(settings=Settings(home=str(tmp_path), database_url=pg_url))
    seen = _statements(fresh.store.db)
    fresh.enqueue("anything", workflow_id="w1")
    assert [w.workflow_id for w in fresh.list_workflows()] == ["w1"]
    # checking took no session lock and ran no DDL: fine behind pgbouncer's transaction pooling
    assert seen and not [s for s in seen if "advisory" in s or s.lstrip().upper().startswith(("CREATE", "ALTER", "SET"))]


def test_the_setting_turns_it_on_for_postgres_and_off_for_sqlite(pg_url: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client = DurableClient(settings=Settings(home=str(tmp_path), database_url=pg_url, auto_migrate=True))
    assert client.list_workflows() == []
    assert f"{VERSION_TABLE}" in _tables(pg_url)

    sqlite_url = f"sqlite:///{tmp_path / 'off.sqlite3'}"
    assert Settings.from_env({"DURABLE_AUTO_MIGRATE": "0"}).auto_migrate is False
    off = DurableClient(settings=Settings(home=str(tmp_path), database_url=sqlite_url, auto_migrate=False))
    with pytest.raises(SchemaError, match="do not exist"):
        off.list_workflows()
    monkeypatch.setenv("DURABLE_AUTO_MIGRATE", "0")  # the environment is the setting too
    with pytest.raises(SchemaError):
        Database(sqlite_url).ensure_schema()

    monkeypatch.delenv("DURABLE_AUTO_MIGRATE")
    on = DurableClient(settings=Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'on.sqlite3'}"))
    assert on.list_workflows() == []  # the embedded default migrates itself


@pytest.mark.parametrize("auto_migrate", [False, True])
def test_a_process_older_than_the_schema_says_so(pg_url: str, auto_migrate: bool) -> None:
    Database(pg_url).migrate()
    _set_revision(pg_url, "0099")  # migrated by a newer durable
    database = Database(pg_url, auto_migrate=auto_migrate)
    with pytest.raises(SchemaError, match="at revision 0099, newer than this version of durable knows"):
        database.ensure_schema()
    with pytest.raises(SchemaError, match="newer than this version"):
        database.migrate()  # `durable migrate` from old code does not touch it either
    database.dispose()


def test_a_process_newer_than_the_schema_says_to_migrate(pg_url: str) -> None:
    Database(pg_url).migrate()
    _set_revision(pg_url, "0002")
    database = Database(pg_url)
    with pytest.raises(SchemaError, match=f"at revision 0002, and this version of durable needs {Database.head_revision()}"):
        database.ensure_schema()
    database.dispose()


def test_the_migration_lock_times_out_on_postgres(pg_url: str) -> None:
    holder = create_engine(pg_url)
    try:
        with holder.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SYSTEM_TABLES.lock_id})
            conn.commit()
            database = Database(pg_url, migration_lock_timeout_seconds=0.5)
            started = time.monotonic()
            with pytest.raises(SchemaError, match="could not take the migration lock"):
                database.migrate()
            assert time.monotonic() - started < 10
            # the connection it used does not keep the short lock_timeout
            with database.engine.connect() as probe:
                assert probe.execute(text("SHOW lock_timeout")).scalar() == "0"
            database.dispose()
    finally:
        holder.dispose()
    assert Database(pg_url, migration_lock_timeout_seconds=0.5).migrate() == Database.head_revision()


def test_the_migration_lock_times_out_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.sqlite3'}"
    lock_path = str(tmp_path / "d.sqlite3") + f".{VERSION_TABLE}.lock"
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SchemaError, match="could not take the migration lock"):
            Database(url, migration_lock_timeout_seconds=0.3).migrate()
    assert Database(url).migrate() == Database.head_revision()
