"""Waiting for a result without polling (issue 13). On Postgres every end of
a workflow notifies a channel in the ending transaction (a trigger: finish,
cancel, quarantine alike), and `handle.result()` LISTENs; SQLite keeps its
backed-off poll. How fast a wait wakes is a benchmark figure
(benchmarks/result_wake.py), not asserted here: these tests count the looks
at the database instead."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import psycopg
import pytest
from sqlalchemy import text

from durable import DurableClient
from durable.client import new_workflow_row
from durable.handle import SAFETY_POLL_FIRST_SECONDS, SAFETY_POLL_MAX_SECONDS
from durable.database import Database
from durable.errors import DurableError
from durable.records import Status
from durable.schema import ENDED_CHANNEL
from durable.settings import Settings
from durable.store import Store
from tests.harness import Backend, wait_for

NOW = 1_800_000_000_000


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


def count_looks(client: DurableClient) -> Callable[[], int]:
    """Counts the client's reads of a workflow's outcome (a spy: the real
    method runs)."""
    calls = [0]
    real = client.store.workflow_outcome

    def counted(workflow_id: str) -> Any:
        calls[0] += 1
        return real(workflow_id)

    client.store.workflow_outcome = counted  # type: ignore[method-assign]
    return lambda: calls[0]


def most_looks_without_polling(elapsed_seconds: float) -> int:
    """The looks a wait woken by the end makes in this time: the first,
    one per pause of the safety net (0.5 s doubling to 5 s) that fits, and
    one after the wake-up."""
    looks, waited, pause = 2, 0.0, SAFETY_POLL_FIRST_SECONDS
    while waited + pause <= elapsed_seconds:
        looks, waited, pause = looks + 1, waited + pause, min(pause * 2, SAFETY_POLL_MAX_SECONDS)
    return looks


def test_a_result_wait_is_woken_by_the_end_not_by_polling(client, start_worker, effects_dir):
    start_worker()
    looks = count_looks(client)
    handle = client.enqueue("slow_workflow", args=["done", 3.0])
    started = time.monotonic()
    assert handle.result(timeout=60) == "done"
    elapsed = time.monotonic() - started
    # polled every 0.2 s, a wait of 3 s or more looks 15 times or more
    assert looks() <= most_looks_without_polling(elapsed) < elapsed / 0.2, (looks(), elapsed)
    listener = client.ended_listener()
    assert listener is not None and listener.listening


def test_a_cancel_wakes_the_wait(client, start_worker, effects_dir):
    start_worker()
    looks = count_looks(client)
    handle = client.enqueue("slow_workflow", args=["never", 60.0])
    wait_for(lambda: handle.status().status is Status.PENDING, 60, "the workflow to start")
    threading.Timer(2.0, client.cancel, args=[handle.workflow_id]).start()
    started = time.monotonic()
    with pytest.raises(DurableError):
        handle.result(timeout=60)
    elapsed = time.monotonic() - started
    assert handle.status().status is Status.CANCELLED
    # (the status polls above are not counted: get() reads the whole row)
    assert looks() <= most_looks_without_polling(elapsed) < elapsed / 0.2, (looks(), elapsed)


def test_a_lost_listen_connection_is_made_again_and_the_wait_still_ends(client, backend, start_worker, effects_dir):
    start_worker()
    handle = client.enqueue("slow_workflow", args=["done", 4.0])
    waiter: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: waiter.update(result=handle.result(timeout=60)))
    thread.start()
    listener = client.ended_listener()
    assert listener is not None and listener.wait_listening(10)
    with psycopg.connect(backend.database_url.replace("+psycopg", ""), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = %s AND datname = current_database()",
            (f"LISTEN {ENDED_CHANNEL}",),
        ).fetchall()
    assert killed == [(True,)]
    thread.join(60)
    assert waiter == {"result": "done"}
    wait_for(lambda: listener.listening, 30, "the listener to reconnect")


def test_sqlite_has_no_listener_and_waits_by_polling(tmp_path):
    client = DurableClient(settings=Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}"))
    assert client.ended_listener() is None
    handle = client.enqueue("wf", workflow_id="w")
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)


# --- the trigger, on the store alone -----------------------------------------------


def _row(workflow_id: str, **kw: Any) -> dict[str, Any]:
    row = new_workflow_row(Settings(), "wf", [1], {}, workflow_id=workflow_id, **kw)
    row["created_at_ms"] = row["updated_at_ms"] = NOW
    return row


def test_every_end_notifies_in_its_transaction(create_pg_database):
    url = create_pg_database("ended")
    store = Store(Database(url))
    store.db.migrate()
    heard: list[str] = []
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"LISTEN {ENDED_CHANNEL}")

        def drain() -> list[str]:
            heard.extend(n.payload for n in conn.notifies(timeout=0.5))
            return heard

        for wid in ("done", "cancelled", "quarantined", "rolled-back", "running"):
            store.insert_workflow(_row(wid, max_recovery_attempts=0))
        claim = store.claim("done", "o", NOW, 5_000, name_hint="wf")
        assert claim is not None
        store.finish("done", claim.epoch, Status.SUCCESS, NOW, output="1", has_parent=False)
        store.cancel("cancelled", NOW)
        assert store.claim("quarantined", "o", NOW, 5_000, name_hint="wf") is not None
        lost = store.claim("quarantined", "o2", NOW + 10_000, 5_000, owner_alive=lambda *a: False)
        assert lost is not None and lost.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value
        with store.db.engine.connect() as other:  # an end rolled back is not heard
            other.execute(text("UPDATE durable_workflows SET status = 'ERROR' WHERE workflow_id = 'rolled-back'"))
            other.rollback()
        assert store.claim("running", "o", NOW, 5_000, name_hint="wf") is not None  # not an end
        deadline = time.monotonic() + 10
        while len(drain()) < 3 and time.monotonic() < deadline:
            pass
        time.sleep(0.2)
        drain()
    assert heard == ["done", "cancelled", "quarantined"]
    store.db.dispose()


def test_a_wait_for_the_listener_that_began_before_its_thread_started_still_ends(create_pg_database) -> None:
    """Waiting for the LISTEN connection, then a subscription (another
    thread's) starts the listener: each listener thread comes with an Event
    of its own, and the wait follows it instead of waiting out its timeout
    on the one it first saw (a race the lost-connection test lost once)."""
    from durable.store.listen import EndedListener

    db = Database(create_pg_database("listen_race"), auto_migrate=True)
    listener = EndedListener(db)
    heard: dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: heard.update(listening=listener.wait_listening(30)))
    waiting.start()
    time.sleep(0.2)  # the wait has begun, on the Event the listener was built with
    unsubscribe = listener.subscribe("nobody", lambda: None)
    waiting.join(timeout=60)
    try:
        assert heard == {"listening": True}  # False: it waited out its 30 s on an Event no thread sets
    finally:
        unsubscribe()
        listener.stop()
        db.dispose()
