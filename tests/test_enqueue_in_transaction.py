"""`DurableClient.enqueue(..., transaction=...)` (issue 13): the workflow
row is written in the caller's transaction on durable's own database.
Rolled back: no row, nothing runs. Committed: it runs once, published
after the commit, or by the recovery sweeper when that publish was lost
(the broker was down) or impossible (psycopg has no commit hook). Real
Postgres, Redis and worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from durable import DurableClient, Status
from durable.errors import DuplicateWorkflowError, WorkflowNotFoundError
from tests.harness import Backend
from tests.workflows import effects

TEN_STEPS = {"sum": sum(i * i for i in range(1, 11)), "squares": [i * i for i in range(1, 11)]}


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


@pytest.fixture
def app_engine(backend: Backend, client: DurableClient) -> Iterator[Engine]:
    """The web app's own engine on the same database, with its own table."""
    client.store.db.ensure_schema()  # durable's tables exist (a web app runs `durable migrate`)
    engine = create_engine(backend.database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id text PRIMARY KEY, total numeric NOT NULL)"))
    yield engine
    engine.dispose()


def _psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _orders(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM orders ORDER BY id")).scalars())


def _ran_once(client: DurableClient, workflow_id: str) -> None:
    assert client.handle(workflow_id).result(timeout=60) == TEN_STEPS
    assert [k for k, _, _ in effects(workflow_id)] == [f"step{i}" for i in range(1, 11)]
    assert client.get(workflow_id).status is Status.SUCCESS


def _nothing(client: DurableClient, workflow_id: str) -> None:
    with pytest.raises(WorkflowNotFoundError):
        client.get(workflow_id)
    assert effects(workflow_id) == []


def test_session_commit_runs_once_rollback_runs_nothing(client, app_engine, start_worker, effects_dir):
    start_worker()
    with Session(app_engine) as session:
        with session.begin():
            session.execute(text("INSERT INTO orders VALUES ('o-1', 10)"))
            client.enqueue("ten_steps", workflow_id="order-o-1", transaction=session)
            # not visible outside the transaction before the commit
            assert client.list_workflows() == []
    with Session(app_engine) as session:
        session.execute(text("INSERT INTO orders VALUES ('o-2', 20)"))
        client.enqueue("ten_steps", workflow_id="order-o-2", transaction=session)
        session.rollback()
    _ran_once(client, "order-o-1")
    assert _orders(app_engine) == ["o-1"]
    _nothing(client, "order-o-2")


def test_an_enqueue_that_is_its_transactions_first_statement_commits_and_rolls_back_with_it(
    client, app_engine, start_worker, effects_dir
):
    """Nothing else written yet: the row is still in the transaction the
    caller commits or rolls back (a Session's and a Connection's)."""
    start_worker()
    with Session(app_engine) as session, session.begin():
        client.enqueue("ten_steps", workflow_id="first-s-1", transaction=session)
    with Session(app_engine) as session:
        with session.begin():
            client.enqueue("ten_steps", workflow_id="first-s-2", transaction=session)
            session.rollback()
    with app_engine.connect() as conn:
        conn.begin()
        client.enqueue("ten_steps", workflow_id="first-c-1", transaction=conn)
        conn.commit()
        conn.begin()
        client.enqueue("ten_steps", workflow_id="first-c-2", transaction=conn)
        conn.rollback()
    _ran_once(client, "first-s-1")
    _ran_once(client, "first-c-1")
    _nothing(client, "first-s-2")
    _nothing(client, "first-c-2")


def test_connection_commit_runs_once_rollback_runs_nothing(client, app_engine, start_worker, effects_dir):
    start_worker()
    with app_engine.begin() as conn:
        conn.execute(text("INSERT INTO orders VALUES ('o-1', 10)"))
        client.enqueue("ten_steps", workflow_id="order-o-1", transaction=conn)
    with app_engine.connect() as conn:
        conn.execute(text("INSERT INTO orders VALUES ('o-2', 20)"))
        client.enqueue("ten_steps", workflow_id="order-o-2", transaction=conn)
        conn.rollback()
        # the same connection, a later transaction: only its own workflow is published
        client.enqueue("ten_steps", workflow_id="order-o-3", transaction=conn)
        conn.commit()
    _ran_once(client, "order-o-1")
    _ran_once(client, "order-o-3")
    assert _orders(app_engine) == ["o-1"]
    _nothing(client, "order-o-2")


def test_psycopg_commit_runs_once_through_the_sweeper(client, backend, app_engine, start_worker, effects_dir):
    start_worker()
    with psycopg.connect(_psycopg_dsn(backend.database_url)) as conn:  # commits on leaving
        conn.execute("INSERT INTO orders VALUES ('o-1', 10)")
        client.enqueue("ten_steps", workflow_id="order-o-1", transaction=conn)
    with psycopg.connect(_psycopg_dsn(backend.database_url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES ('o-2', 20)")
            client.enqueue("ten_steps", workflow_id="order-o-2", transaction=conn)
            raise_rollback(conn)
    _ran_once(client, "order-o-1")
    assert _orders(app_engine) == ["o-1"]
    _nothing(client, "order-o-2")


def raise_rollback(conn: Any) -> None:
    raise psycopg.Rollback()  # leaves the transaction block, rolled back


def test_committed_while_the_broker_is_down_runs_once(backend, app_engine, start_worker, effects_dir):
    """The client's broker is unreachable at commit (the workers' is fine):
    the publish after commit fails, the sweeper publishes the row."""
    down = DurableClient(settings=backend.settings(broker_url="redis://127.0.0.1:9/0", redelivery_seconds=3.0))
    start_worker()
    with Session(app_engine) as session, session.begin():
        session.execute(text("INSERT INTO orders VALUES ('o-1', 10)"))
        down.enqueue("ten_steps", workflow_id="order-o-1", transaction=session)
    with app_engine.begin() as conn:
        down.enqueue("ten_steps", workflow_id="order-o-2", transaction=conn)
    _ran_once(down, "order-o-1")
    _ran_once(down, "order-o-2")


def test_another_database_is_refused_and_nothing_is_written(
    client, app_engine, create_pg_database, tmp_path: Path
):
    other = create_engine(create_pg_database("other"))
    with other.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id text PRIMARY KEY)"))
    with Session(other) as session, session.begin():
        session.execute(text("INSERT INTO orders VALUES ('o-1')"))
        with pytest.raises(ValueError, match="durable's system database"):
            client.enqueue("ten_steps", workflow_id="w-1", transaction=session)
    with psycopg.connect(_psycopg_dsn(str(other.url.render_as_string(hide_password=False)))) as conn:
        with pytest.raises(ValueError, match="durable's system database"):
            client.enqueue("ten_steps", workflow_id="w-2", transaction=conn)
    sqlite = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    with sqlite.begin() as conn, pytest.raises(ValueError, match="durable's own database"):
        client.enqueue("ten_steps", workflow_id="w-3", transaction=conn)
    with pytest.raises(TypeError, match="transaction= takes"):
        client.enqueue("ten_steps", workflow_id="w-4", transaction=object())
    assert client.list_workflows() == []
    other.dispose()


def test_no_transaction_to_join_is_refused(client, backend, app_engine):
    with psycopg.connect(_psycopg_dsn(backend.database_url), autocommit=True) as conn:
        with pytest.raises(ValueError, match="autocommit"):
            client.enqueue("ten_steps", workflow_id="w-1", transaction=conn)
    autocommit = create_engine(backend.database_url, isolation_level="AUTOCOMMIT")
    with autocommit.connect() as conn, pytest.raises(ValueError, match="autocommit"):
        client.enqueue("ten_steps", workflow_id="w-2", transaction=conn)
    autocommit.dispose()
    assert client.list_workflows() == []


def test_a_held_dedup_key_leaves_the_callers_transaction_usable(client, backend, app_engine):
    holder = client.enqueue("ten_steps", dedup_key="o-1", workflow_id="holder")
    with Session(app_engine) as session, session.begin():
        with pytest.raises(DuplicateWorkflowError) as refused:
            client.enqueue("ten_steps", dedup_key="o-1", transaction=session)
        assert refused.value.workflow_id == holder.workflow_id
        same = client.enqueue(
            "ten_steps", dedup_key="o-1", on_duplicate="return_existing", transaction=session
        )
        assert same.workflow_id == holder.workflow_id
        session.execute(text("INSERT INTO orders VALUES ('o-1', 10)"))  # still usable
    with psycopg.connect(_psycopg_dsn(backend.database_url)) as conn:
        with pytest.raises(DuplicateWorkflowError):
            client.enqueue("ten_steps", dedup_key="o-1", transaction=conn)
        conn.execute("INSERT INTO orders VALUES ('o-2', 20)")
    assert _orders(app_engine) == ["o-1", "o-2"]
    assert [w.workflow_id for w in client.list_workflows()] == ["holder"]


def test_a_reused_psycopg_connection_joins_its_next_transaction(client, backend, app_engine):
    """An idle connection (its last transaction committed) already known to
    be on durable's database: the row still goes into the transaction the
    enqueue begins, not into one of its own."""
    with psycopg.connect(_psycopg_dsn(backend.database_url)) as conn:
        client.enqueue("ten_steps", workflow_id="first", transaction=conn)
        conn.commit()
        client.enqueue("ten_steps", workflow_id="second", transaction=conn)
        conn.rollback()
    assert [w.workflow_id for w in client.list_workflows()] == ["first"]
