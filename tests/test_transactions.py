"""@transaction steps against real Postgres, Redis and Celery workers: the
write and the checkpoint commit together, in the system database or in a
separate application database."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, select

from durable import Durable, DurableClient, Settings, Status
from tests.harness import Backend
from tests.tx_workflows import counters, metadata, tx_rows
from tests.workflows import effects


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    """This suite runs on Postgres and Redis only."""
    return pg_backend


@pytest.fixture(params=["same", "separate"])
def app_database_url(request, backend: Backend, create_pg_database) -> str:
    """The application tables live in the system database, or in another
    database on the same server (DURABLE_APP_DATABASE_URL)."""
    url = backend.database_url if request.param == "same" else create_pg_database("app")
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    if request.param == "separate":
        backend.extra_env["DURABLE_APP_DATABASE_URL"] = url
    return url


@pytest.fixture
def client(backend: Backend) -> DurableClient:
    """Unlike the other suites', this client keeps the default redelivery delay."""
    return backend.client()


def rows_for(url: str, key: str) -> list[int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = [r[0] for r in conn.execute(select(tx_rows.c.n).where(tx_rows.c.key == key).order_by(tx_rows.c.n))]
    engine.dispose()
    return found


def test_committed_transaction_is_not_run_again_after_kill_before_ack(
    backend, app_database_url, start_worker, client, effects_dir
):
    start_worker()
    handle = client.enqueue("write_then_die", args=["k1"])
    assert handle.result(timeout=60) == {"written": 5, "after": "survived"}
    # the process died after the commit; the replay took the checkpoint
    assert rows_for(app_database_url, "k1") == [0, 1, 2, 3, 4]
    ran = [kind for kind, _, _ in effects(handle.workflow_id)]
    assert ran.count("insert_rows") == 1, ran
    assert ran.count("die_once") == 2, ran
    assert handle.status().recovery_attempts == 1
    steps = client.list_steps(handle.workflow_id)
    assert [(s.name, s.status, s.attempts, s.output) for s in steps[:1]] == [("insert_rows", "SUCCESS", 1, 5)]


def test_separate_app_database_records_outputs_there(backend, create_pg_database, start_worker, client, effects_dir):
    app_url = create_pg_database("app")
    engine = create_engine(app_url)
    metadata.create_all(engine)
    backend.extra_env["DURABLE_APP_DATABASE_URL"] = app_url
    start_worker()
    handle = client.enqueue("write_then_die", args=["k2"])
    assert handle.result(timeout=60)["written"] == 5
    with engine.connect() as conn:
        outputs = conn.exec_driver_sql(
            "SELECT workflow_id, step_id, output FROM durable_transaction_outputs"
        ).all()
    engine.dispose()
    assert [tuple(r) for r in outputs] == [(handle.workflow_id, 0, "5")]
    assert rows_for(app_url, "k2") == [0, 1, 2, 3, 4]
    # nothing of the application's landed in the system database
    system = create_engine(backend.database_url)
    assert not inspect(system).has_table("tx_rows")
    system.dispose()


def test_failed_attempt_rolls_back_its_writes_and_the_retry_writes_once(
    backend, app_database_url, start_worker, client, effects_dir
):
    start_worker()
    handle = client.enqueue("fail_once_workflow", args=["k3"])
    assert handle.result(timeout=60) == 2
    assert [k for k, _, _ in effects(handle.workflow_id)] == ["insert_then_fail_once"] * 2
    assert rows_for(app_database_url, "k3") == [0, 1]  # the first attempt's rows were rolled back
    (step,) = client.list_steps(handle.workflow_id)
    assert (step.status, step.attempts) == ("SUCCESS", 2)


def test_error_rolls_back_everything_and_fails_like_a_step(backend, app_database_url, start_worker, client):
    start_worker()
    handle = client.enqueue("always_fail_workflow", args=["k4"])
    with pytest.raises(ValueError, match="bad row for k4"):
        handle.result(timeout=60)
    assert handle.status().status is Status.ERROR
    assert rows_for(app_database_url, "k4") == []
    (step,) = client.list_steps(handle.workflow_id)
    assert (step.name, step.status, step.attempts) == ("insert_then_fail", "ERROR", 1)


def test_serialization_failures_are_retried(backend, start_worker, client, effects_dir):
    engine = create_engine(backend.database_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(counters.insert().values(name="c", value=0))
    start_worker(concurrency=2)
    # two SERIALIZABLE read-pause-write transactions at once: one must conflict
    handles = [client.enqueue("increment_workflow", args=["c", 1.0]) for _ in range(2)]
    assert sorted(h.result(timeout=60) for h in handles) == [1, 2]
    with engine.connect() as conn:
        assert conn.execute(select(counters.c.value)).scalar_one() == 2
    engine.dispose()
    runs = sum(1 for h in handles for k, _, _ in effects(h.workflow_id) if k == "slow_increment")
    assert runs >= 3, "expected the loser to be re-run after its serialization failure"
    for h in handles:
        (step,) = client.list_steps(h.workflow_id)
        assert (step.status, step.attempts) == ("SUCCESS", 1)  # a conflict is not a failed attempt


def test_idempotency_key_is_stable_across_retries_and_recovery(backend, start_worker, client, effects_dir):
    start_worker()
    handle = client.enqueue("idempotency_workflow")
    wid = handle.workflow_id
    assert handle.result(timeout=60) == [f"{wid}:0", f"{wid}:1"]
    keys = [k for k, _, _ in effects(wid)]
    # each step: two failed attempts, one run killed, one success, all one key
    assert keys == [f"key:a:{wid}:0"] * 4 + [f"key:b:{wid}:1"] * 4, keys
    assert handle.status().recovery_attempts == 2


def test_transaction_without_session_parameter_is_rejected(tmp_path):
    dur = Durable(settings=Settings(home=str(tmp_path)))

    def no_params() -> None: ...

    def keyword_only(*, session) -> None: ...

    async def asynchronous(session) -> None: ...

    for fn in (no_params, keyword_only, asynchronous):
        with pytest.raises(TypeError, match=fn.__name__):
            dur.transaction(fn)
    with pytest.raises(TypeError, match="first positional parameter"):
        dur.transaction()(lambda **kwargs: None)
    with pytest.raises(TypeError):
        dur.transaction(42)

    @dur.transaction(isolation="SERIALIZABLE")
    def fine(session, x: int) -> int:
        return x

    assert fine.transactional and fine.isolation == "SERIALIZABLE"
