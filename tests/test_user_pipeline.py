"""The batch pipeline under fire (examples/user_pipeline): 10 batches x 10
pages x 10 users, page inserts failing after writing 40% of the time, pool
processes and whole workers SIGKILLed at random. The @transaction version
must end with exactly 1,000 rows, each user once."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, func, select

from durable import DurableClient
from examples.user_pipeline import run as pipeline
from examples.user_pipeline.workflows import users
from tests.harness import FAST_RECOVERY, Backend

def test_plain_step_pipeline_duplicates_users(pg_backend: Backend, tmp_path: Path):
    """The contrast: a plain step commits its page, then fails; its retry
    inserts the page again. Every user is there, many of them twice."""
    settings = pg_backend.settings()
    report = pipeline.run("plain", settings, pause_seconds=0.0, timeout_seconds=60, log_dir=tmp_path,
                          extra_env=FAST_RECOVERY)
    assert report.status == "SUCCESS" and report.result == 1000, report
    assert report.distinct_users == 1000
    client = DurableClient(settings=settings)
    failed_attempts = sum(
        s.attempts - 1
        for b in client.list_workflows(name="user_pipeline.batch", limit=100)
        for s in client.list_steps(b.workflow_id)
    )
    assert failed_attempts > 0
    # each failed attempt left its 10 rows behind
    assert report.rows == 1000 + 10 * failed_attempts, report


def test_transaction_pipeline_under_sigkills_writes_each_user_once(pg_backend: Backend, tmp_path: Path):
    settings = pg_backend.settings()
    report = pipeline.run(
        "transaction", settings, workers=2, concurrency=2, chaos_seconds=20, pause_seconds=0.1,
        timeout_seconds=70, log_dir=tmp_path, extra_env=FAST_RECOVERY,
    )
    print(report.summary())
    assert report.status == "SUCCESS", report
    assert report.result == 1000
    assert report.children_killed + report.workers_killed >= 3, report  # the chaos did strike
    assert (report.rows, report.distinct_users) == (1000, 1000), report

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        per_page = conn.execute(select(users.c.batch, users.c.page, func.count()).group_by(users.c.batch, users.c.page)).all()
    engine.dispose()
    assert len(per_page) == 100 and all(n == 10 for _, _, n in per_page)

    client = DurableClient(settings=settings)
    batches = client.list_workflows(name="user_pipeline.batch", limit=100)
    assert len(batches) == 10 and all(b.status.value == "SUCCESS" for b in batches)
    # kills landed inside workflows, and failures after writing were retried
    assert sum(b.recovery_attempts for b in batches) >= 1
    retried = [s for b in batches for s in client.list_steps(b.workflow_id) if s.attempts > 1]
    assert len(retried) >= 20, "about 40% of pages should have failed at least once"
