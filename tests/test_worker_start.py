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


def test_a_child_forked_after_the_schema_step_inherits_the_statements_compiled(pg_backend: Backend) -> None:
    """The worker's schema step compiles the store's statements in the main
    process, before the pool forks: a child forked then compiles none."""
    import os
    from types import SimpleNamespace

    from durable import Durable
    from durable.celery_binding import SchemaBeforeFork
    from durable.dispatch import RUN_TASK
    from durable.store import Prebuilt

    dur = Durable(settings=pg_backend.settings())
    # the runner the worker's steps find: this app's (with apps made earlier in this
    # process, Celery's shared workflow task may have come bound to one of theirs)
    dur.celery.tasks[RUN_TASK].durable_runner = dur.runner
    store = dur.runner.store
    try:
        # those built with the store (more are built on first use, and compiled then)
        prebuilt = [s for v in vars(store).values() for s in (v.values() if isinstance(v, dict) else [v])
                    if isinstance(s, Prebuilt)]
        assert len(prebuilt) > 10
        SchemaBeforeFork(SimpleNamespace(app=dur.celery))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compiling anything would call the dialect's compiler
            try:
                Prebuilt.statement = property(lambda self: (_ for _ in ()).throw(AssertionError("compiled")))
                for statement in prebuilt:
                    statement.prepare()
                os.write(write, b"ok")
            except BaseException as exc:
                os.write(write, repr(exc).encode()[:1000])
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        assert os.read(read, 1000) == b"ok"
    finally:
        store.db.dispose()
