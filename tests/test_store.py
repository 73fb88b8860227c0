"""The store's contract, once per dialect (SQLite file, Postgres): constraints
decide duplicates, the claim admits one execution, writes are fenced by the
lease epoch, lost executions are counted and quarantined in the claim."""

from __future__ import annotations

import contextlib
import socket
from types import SimpleNamespace
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from durable.client import new_workflow_row
from durable.database import Database, is_unavailable, retry_while_unavailable
from durable.records import Status
from durable.schema import metadata
from durable.settings import Settings
from durable.store import DedupConflict, Store

NOW = 1_800_000_000_000
LEASE = 5_000


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        url = request.getfixturevalue("create_pg_database")("store")
    return Store(Database(url))


def new_row(**kw):
    row = new_workflow_row(Settings(), "wf", [1], {}, **kw)
    row["created_at_ms"] = row["updated_at_ms"] = NOW
    row["redispatch_at_ms"] = NOW + 10_000
    return row


def step_values(workflow_id: str, step_id: int, status: str = "SUCCESS", **kw):
    values = dict(workflow_id=workflow_id, step_id=step_id, name="s", status=status,
                  output="1", attempts=1, started_at_ms=NOW)
    values.update(kw)
    return values


def test_migrations_create_exactly_the_schema(store: Store):
    store.db.migrate()
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # the only table the migrations add beyond schema.py is Alembic's own
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == "durable_alembic_version")] == []


def test_same_id_is_one_workflow_and_dedup_key_is_held_while_active(store: Store):
    first = store.insert_workflow(new_row(workflow_id="a", dedup_key="k"))
    again = store.insert_workflow(new_row(workflow_id="a", dedup_key="k"))
    assert first.created and not again.created
    with pytest.raises(DedupConflict) as conflict:
        store.insert_workflow(new_row(workflow_id="b", dedup_key="k"))
    assert conflict.value.holder_workflow_id == "a"
    assert store.insert_workflow(new_row(workflow_id="c", dedup_key="k", queue="other")).created
    store.cancel("a", NOW)
    assert store.insert_workflow(new_row(workflow_id="b", dedup_key="k")).created


def test_one_claim_wins_and_writes_are_fenced_by_epoch(store: Store):
    store.insert_workflow(new_row(workflow_id="w"))
    claim = store.claim("w", "owner-1", NOW, LEASE)
    assert claim is not None and claim.epoch == 1 and not claim.recovered
    assert store.claim("w", "owner-2", NOW + 1, LEASE) is None  # live lease
    assert store.write_step(claim.epoch, step_values("w", 0))
    assert not store.write_step(claim.epoch, step_values("w", 0, output="2"))  # final: never replaced
    # the lease expires; a new execution takes over and the old one is fenced
    taken = store.claim("w", "owner-2", NOW + LEASE + 1, LEASE)
    assert taken is not None and taken.epoch == 2 and taken.recovered
    assert taken.recovery_attempts == 1 and list(taken.steps) == [0]
    assert not store.write_step(claim.epoch, step_values("w", 1))
    assert store.write_step(taken.epoch, step_values("w", 1))
    ended, _ = store.finish("w", claim.epoch, Status.SUCCESS, NOW, output="null")
    assert not ended
    assert store.finish("w", taken.epoch, Status.SUCCESS, NOW, output="null")[0]
    assert store.claim("w", "owner-3", NOW + 10 * LEASE, LEASE) is None  # terminal


def test_retrying_rows_advance_until_final(store: Store):
    store.insert_workflow(new_row(workflow_id="r"))
    claim = store.claim("r", "o", NOW, LEASE)
    assert store.write_step(claim.epoch, step_values("r", 0, status="RETRYING", output=None))
    assert store.write_step(claim.epoch, step_values("r", 0, status="RETRYING", output=None, attempts=2))
    assert store.write_step(claim.epoch, step_values("r", 0, attempts=3))
    (row,) = store.list_steps("r")
    assert (row["status"], row["attempts"]) == ("SUCCESS", 3)


def test_lost_executions_are_counted_then_quarantined(store: Store):
    store.insert_workflow(new_row(workflow_id="q", max_recovery_attempts=1))
    t = NOW
    first = store.claim("q", "o", t, LEASE)
    assert first.status == "PENDING"
    t += LEASE + 1
    second = store.claim("q", "o", t, LEASE)
    assert second.recovered and second.recovery_attempts == 1 and second.status == "PENDING"
    t += LEASE + 1
    third = store.claim("q", "o", t, LEASE)
    assert third.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value
    row = store.workflow_row("q")
    assert row["status"] == "MAX_RECOVERY_ATTEMPTS_EXCEEDED" and row["lease_owner"] is None


def test_suspension_is_not_a_recovery_and_keeps_a_wakeup(store: Store):
    store.insert_workflow(new_row(workflow_id="p"))
    store.insert_workflow(new_row(workflow_id="s"))
    claim = store.claim("s", "o", NOW, LEASE)
    store.wake("s", NOW + 5)  # arrives while the execution still holds the lease
    assert store.suspend("s", claim.epoch, None, NOW + 6) == NOW + 5
    again = store.claim("s", "o", NOW + 7, LEASE)
    assert again is not None and not again.recovered and again.recovery_attempts == 0


def test_sweeper_finds_lost_messages_expired_leases_and_due_timers(store: Store):
    store.insert_workflow(new_row(workflow_id="enqueued"))  # message lost: due at NOW + 10 s
    store.insert_workflow(new_row(workflow_id="leased"))
    store.claim("leased", "o", NOW, LEASE)
    assert store.due_for_dispatch(NOW + 1, 3_000) == []
    due = {r["workflow_id"] for r in store.due_for_dispatch(NOW + 10_001, 3_000)}
    assert due == {"enqueued", "leased"}
    # marked: the next sweep leaves them alone for a while
    assert store.due_for_dispatch(NOW + 10_002, 3_000) == []


def test_claim_with_the_message_name_decides_like_the_full_claim(store: Store):
    """The one-statement claim (the message names the workflow) takes only an
    unleased workflow; everything else falls through to the full claim."""
    store.insert_workflow(new_row(workflow_id="h"))
    first = store.claim("h", "o1", NOW, LEASE, lambda name: 7, name_hint="wf")
    assert (first.epoch, first.recovered, first.max_recovery_attempts, first.steps) == (1, False, 7, {})
    assert store.claim("h", "o2", NOW + 1, LEASE, name_hint="wf") is None  # live lease
    assert store.write_step(first.epoch, step_values("h", 0))
    assert store.suspend("h", first.epoch, NOW + 100, NOW + 2) == NOW + 100
    woken = store.claim("h", "o2", NOW + 100, LEASE, name_hint="wf")
    assert (woken.epoch, woken.recovered, list(woken.steps)) == (2, False, [0])
    assert woken.steps[0]["output"] == "1"
    lost = store.claim("h", "o3", NOW + 100 + LEASE + 1, LEASE, name_hint="wf")
    assert (lost.epoch, lost.recovered, lost.recovery_attempts) == (3, True, 1)
    assert store.finish("h", lost.epoch, Status.SUCCESS, NOW, output="null", has_parent=False) == (True, None)
    assert store.claim("h", "o4", NOW + 10 * LEASE, LEASE, name_hint="wf") is None  # terminal
    assert store.claim("missing", "o", NOW, LEASE, name_hint="wf") is None


def test_a_pinned_connection_the_server_dropped_is_replaced(create_pg_database):
    store = Store(Database(create_pg_database("pin")))
    store.insert_workflow(new_row(workflow_id="d"))
    claim = store.claim("d", "o", NOW, LEASE, name_hint="wf")
    with store.db.pinned():
        assert store.write_step(claim.epoch, step_values("d", 0))
        with store.db.driver_cursor() as cursor:
            backend_pid = cursor.connection.info.backend_pid
        with store.db.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})
        written = retry_while_unavailable(
            lambda: store.write_step(claim.epoch, step_values("d", 1)), "test", give_up_after_seconds=10
        )
        assert written
        with store.db.driver_cursor() as cursor:
            assert cursor.connection.info.backend_pid != backend_pid
    assert [r["step_id"] for r in store.list_steps("d")] == [0, 1]


def test_upgrade_from_0002_keeps_steps_and_drops_their_foreign_key(store: Store):
    """Migration 0003 rebuilds the steps table on SQLite: rows must survive."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent.parent / "durable" / "migrations"))
    with store.db.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.commit()
    store.db._migrated = True  # stay at 0002 while the rows go in
    later_columns = ("partition_key", "start_at_ms")  # added by 0005
    store.insert_workflow({k: v for k, v in new_row(workflow_id="old").items() if k not in later_columns})
    with store.db.begin() as conn:  # claimed as a 0002 worker would (today's claim reads later columns)
        conn.execute(text("UPDATE durable_workflows SET status = 'PENDING', lease_epoch = 1 WHERE workflow_id = 'old'"))
    claim = SimpleNamespace(epoch=1)
    assert store.write_step(claim.epoch, step_values("old", 0))
    with store.db.engine.connect() as conn:
        assert inspect(conn).get_foreign_keys("durable_steps") != []
    assert store.db.migrate() == Database.head_revision()
    with store.db.engine.connect() as conn:
        assert inspect(conn).get_foreign_keys("durable_steps") == []
    assert [(r["step_id"], r["output"]) for r in store.list_steps("old")] == [(0, "1")]
    assert store.write_step(claim.epoch, step_values("old", 1))


def test_a_server_that_is_down_reads_as_unavailable_on_the_driver_path():
    """The pool raises the driver's own error when it cannot connect; the
    checkpoint path must see SQLAlchemy's, which `retry_while_unavailable`
    waits out, or a database restart would fail workflows."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    database = Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
    database._migrated = True
    store = Store(database)
    for pinned in (False, True):
        with (database.pinned() if pinned else contextlib.nullcontext()):
            with pytest.raises(OperationalError) as raised:
                retry_while_unavailable(
                    lambda: store.write_step(1, step_values("w", 0)), "test", give_up_after_seconds=0.2
                )
        assert is_unavailable(raised.value)
