"""Retention on real Postgres at scale: 100,000 old ended workflows (with a
step each) go in small batches, while a writer keeps checkpointing an
active workflow, which is never touched."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from durable import Durable, Settings, Status
from durable.retention import BATCH_ROOTS, collect_garbage
from durable.store import Store

OLD = 100_000
DAY_MS = 86_400_000


def test_a_hundred_thousand_old_workflows_go_in_batches_while_active_ones_are_untouched(
    create_pg_database, tmp_path
):
    dur = Durable(database_url=create_pg_database("retention"), settings=Settings(home=str(tmp_path)))
    store: Store = dur.store
    store.db.migrate()
    now = dur.clock.now_ms()
    with store.db.begin() as conn:
        conn.execute(text(
            "INSERT INTO durable_workflows (workflow_id, name, status, queue, inputs, created_at_ms, "
            "updated_at_ms, completed_at_ms) SELECT 'old-' || i, 'old', 'SUCCESS', 'celery', '[]', "
            ":t, :t, :t FROM generate_series(1, :n) AS i"
        ), dict(t=now - 10 * DAY_MS, n=OLD))
        conn.execute(text(
            "INSERT INTO durable_steps (workflow_id, step_id, name, status, output) "
            "SELECT 'old-' || i, 0, 'step', 'SUCCESS', '1' FROM generate_series(1, :n) AS i"
        ), dict(n=OLD))
        conn.execute(text(
            "INSERT INTO durable_workflows (workflow_id, name, status, queue, inputs, created_at_ms, "
            "updated_at_ms, lease_epoch) VALUES ('active', 'active', 'PENDING', 'celery', '[]', :t, :t, 1)"
        ), dict(t=now - 20 * DAY_MS))

    with store.db.begin() as conn:
        conn.execute(text("ANALYZE durable_workflows"))  # as autovacuum would after a bulk load

    writes: list[float] = []
    done = threading.Event()

    def checkpoint_meanwhile() -> None:  # an execution that goes on writing its steps
        step = 0
        while not done.is_set():
            t = time.perf_counter()
            assert store.write_step(1, dict(
                workflow_id="active", step_id=step, name="s", status="SUCCESS", output="1",
                attempts=1, started_at_ms=now, completed_at_ms=now,
            ))
            writes.append(time.perf_counter() - t)
            step += 1
            time.sleep(0.01)

    writer = threading.Thread(target=checkpoint_meanwhile)
    writer.start()
    try:
        batches = 0
        while True:  # the sweeper's way: one bounded batch at a time
            deleted = collect_garbage(store, None, now - 7 * DAY_MS, max_batches=1)
            if not deleted:
                break
            assert deleted <= BATCH_ROOTS
            batches += 1
    finally:
        done.set()
        writer.join()
    with store.db.begin() as conn:
        left = conn.execute(text("SELECT count(*) FROM durable_workflows WHERE name = 'old'")).scalar_one()
        old_steps = conn.execute(text("SELECT count(*) FROM durable_steps WHERE workflow_id LIKE 'old-%'")).scalar_one()
        active_steps = conn.execute(text("SELECT count(*) FROM durable_steps WHERE workflow_id = 'active'")).scalar_one()
    assert left == 0 and old_steps == 0
    assert batches == OLD // BATCH_ROOTS
    assert dur.get("active").status is Status.PENDING and active_steps == len(writes) > batches
    print(f"\n{OLD} workflows in {batches} batches; a concurrent checkpoint took at most {max(writes) * 1000:.1f} ms")
    dur.store.db.dispose()
