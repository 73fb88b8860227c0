"""The checkpoint fence on Postgres, raced by a takeover on real connections.

A zombie's step write reads the workflow row to check its lease epoch. Read
without a lock, the row as the zombie's snapshot saw it passed the fence
even when a takeover had committed since, and the write landed after the new
execution's claim had read the steps: unseen by it, and adopted when it came
to write that step itself (an ERROR outcome included). The fence now locks
the row it reads: a takeover waits for a write in flight, and a write sees a
takeover that committed first."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
from sqlalchemy import text

from durable.database import Database
from durable.store import Store
from tests.harness import wait_for
from tests.test_store import LEASE, NOW, new_row, step_values


@pytest.fixture
def database_url(create_pg_database) -> str:
    url: str = create_pg_database("fence")
    Database(url).migrate()
    return url


def _waiting_on_a_lock(url: str, statement_prefix: str) -> bool:
    """Whether a backend of this database waits on a lock in a statement starting so."""
    probe = Database(url)
    try:
        with probe.engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE :prefix"
            ), {"prefix": statement_prefix + "%"}).first())
    finally:
        probe.dispose()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_takeover_committed_while_a_zombie_write_is_in_flight_sees_that_write(database_url: str) -> None:
    zombie_store, new_store = Store(Database(database_url)), Store(Database(database_url))
    zombie_store.insert_workflow(new_row(workflow_id="w"))
    zombie = zombie_store.claim("w", "host-a:1", NOW, LEASE)
    assert zombie is not None

    # A third connection holds an uncommitted row at the zombie's step: the
    # zombie's INSERT passes the fence, then waits for that row's fate.
    blocker = Database(database_url).engine.connect()
    blocker.begin()
    blocker.execute(text(
        "INSERT INTO durable_steps (workflow_id, step_id, name, status, attempts, crashes, started_at_ms) "
        "VALUES ('w', 0, 's', 'RETRYING', 0, 0, :now)"
    ), {"now": NOW})
    failed = step_values("w", 0, status="ERROR", output=None, error='{"type": "builtins.ValueError"}')
    zombie_thread, zombie_out = _in_thread(lambda: zombie_store.write_step(zombie.epoch, failed))
    wait_for(lambda: _waiting_on_a_lock(database_url, "INSERT INTO durable_steps"), 30,
             "the zombie's write to pass the fence and wait")

    # The lease runs out and another execution takes the workflow over.
    takeover_thread, takeover_out = _in_thread(lambda: new_store.claim("w", "host-b:1", NOW + LEASE + 1, LEASE))
    wait_for(lambda: not takeover_thread.is_alive()
             or _waiting_on_a_lock(database_url, "UPDATE durable_workflows"), 30,
             "the takeover to commit, or to wait for the zombie's write")

    blocker.rollback()
    blocker.close()
    zombie_thread.join(30)
    takeover_thread.join(30)
    assert "error" not in zombie_out and "error" not in takeover_out, (zombie_out, takeover_out)
    claim = takeover_out["value"]
    assert claim is not None and claim.epoch == zombie.epoch + 1
    # Either the zombie's write was refused, or it committed before the
    # takeover, which then read it: never a step the new execution cannot see.
    if zombie_out["value"]:
        assert 0 in claim.steps, "the zombie's checkpoint landed after the takeover read the steps"
    for store in (zombie_store, new_store):
        store.db.dispose()


def test_a_repeatable_read_transaction_spanning_a_lease_renewal_is_not_refused(database_url: str) -> None:
    """A @transaction step at REPEATABLE READ or SERIALIZABLE: a lock on the
    workflow row, which the worker updates every lease_seconds / 3 to renew
    the lease, would fail its every checkpoint; its fence reads its snapshot."""
    store = Store(Database(database_url))
    store.insert_workflow(new_row(workflow_id="w"))
    claim = store.claim("w", "host-a:1", NOW, LEASE)
    assert claim is not None

    for level in ("REPEATABLE READ", "SERIALIZABLE"):
        step_id = 0 if level == "REPEATABLE READ" else 1
        conn = store.db.engine.connect().execution_options(isolation_level=level)
        conn.begin()
        conn.execute(text("SELECT count(*) FROM durable_steps"))  # the user's work: the snapshot is taken
        assert store.renew_leases("host-a:1", {"w": claim.epoch}, NOW + 2 * LEASE) == set()
        assert store.write_step(claim.epoch, step_values("w", step_id), conn=conn)
        conn.commit()
        conn.close()
    assert store.step_row("w", 1) is not None
    store.db.dispose()
