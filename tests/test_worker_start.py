"""What a worker does at its start so that its first workflows (a restarted
worker's own lost work) wait for nothing: each prefork pool child opens its
database connection as soon as it is forked, not on its first workflow."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.harness import Backend, Worker, wait_for


def connections(database_url: str) -> int:
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_pool_children_connect_before_their_first_workflow(pg_backend: Backend, effects_dir: Path,
                                                           tmp_path: Path) -> None:
    worker = Worker(pg_backend.env(effects_dir), tmp_path / "worker.log", concurrency=2,
                    command="durable").start()
    try:
        # the main process holds its own (schema check, sweeper); each child one more
        wait_for(lambda: connections(pg_backend.database_url) >= 4, 10, "a connection from each pool child")
        client = pg_backend.client()
        assert client.list_workflows() == []  # nothing ran: the children connected at their start
        assert client.enqueue("ten_steps").result(timeout=60)["sum"] == 385
        client.store.db.dispose()
    finally:
        worker.kill_all()
