"""@transaction steps on SQLite: the user's writes and the checkpoint commit
together, in the system database or in an application database of their own."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from durable import Durable, Settings
from durable.database import APP_TABLES, Database
from durable.schema import app_metadata

from .conftest import Cluster, FakeClock, RecordingDispatcher, SimulatedCrash


def _orders_table(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total REAL)"))


def _register(dur: Durable, crash_after: dict[str, bool]) -> object:
    @dur.transaction()
    def save_order(session: Session, order_id: str, total: float) -> int:
        session.execute(text("INSERT INTO orders VALUES (:id, :t)"), {"id": order_id, "t": total})
        return 1

    @dur.step()
    def notify() -> None:
        if crash_after.pop("save", False):
            raise SimulatedCrash()

    @dur.workflow()
    def place(order_id: str, total: float) -> int:
        saved = save_order(order_id, total)
        notify()
        return saved

    return place


def test_a_transaction_commits_once_though_the_workflow_is_replayed(cluster: Cluster) -> None:
    _orders_table(cluster.dur.store.db)
    place = _register(cluster.dur, {"save": True})
    handle = place.start("o-1", 10.0)  # type: ignore[attr-defined]
    assert cluster.drive() == ["crashed"]
    cluster.recover()
    assert handle.result(timeout=5) == 1
    with cluster.dur.store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 1


def test_an_application_database_gets_its_outputs_table_by_migration(
    tmp_path: Path, migrated_template: Path, clock: FakeClock
) -> None:
    system = tmp_path / "system.sqlite3"
    system.write_bytes(migrated_template.read_bytes())
    app_db = tmp_path / "app.sqlite3"
    dispatcher = RecordingDispatcher()
    settings = Settings(
        home=str(tmp_path), database_url=f"sqlite:///{system}", app_database_url=f"sqlite:///{app_db}"
    )
    dur = Durable(settings=settings, clock=clock, dispatcher=dispatcher)
    cluster = Cluster(dur, clock, dispatcher)
    assert dur.transactions.separate
    _orders_table(dur.transactions.app_db)
    place = _register(dur, {"save": True})
    handle = place.start("o-2", 5.0)  # type: ignore[attr-defined]
    cluster.drive()
    cluster.recover()
    assert handle.result(timeout=5) == 1
    app = dur.transactions.app_db
    with app.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM durable_transaction_outputs")).scalar() == 1
        tables = set(inspect(conn).get_table_names())
        # only its own table and version table: none of the system database's
        assert tables == {"orders", "durable_transaction_outputs", APP_TABLES.version_table}
        # the migration made exactly what schema.py describes (the rest is
        # the application's table and Alembic's)
        diff = compare_metadata(MigrationContext.configure(conn), app_metadata)
        assert sorted(d[1].name for d in diff if d[0] == "remove_table") == sorted(
            ["orders", APP_TABLES.version_table]
        )
        assert [d for d in diff if d[0] != "remove_table"] == []
    assert app.migrate() == Database.head_revision(APP_TABLES) == "a001"
    dur.store.db.dispose()
    app.dispose()
