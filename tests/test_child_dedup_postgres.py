"""A child started with a dedup key another active workflow holds, on
Postgres: the parent gets DuplicateWorkflowError (it used to end with the
store's internal DedupConflict), recorded so that a replay gives the same.
The engine runs in this process, as in tests/unit, against a real Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import durable
from durable import Status
from durable.errors import DuplicateWorkflowError
from tests.unit.conftest import Cluster


@pytest.fixture
def cluster(create_pg_database, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster.on(create_pg_database("child_dedup"), tmp_path)
    yield cluster
    cluster.dur.store.db.dispose()


def test_a_held_dedup_key_raises_duplicate_workflow_error_in_the_parent(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow(name="holder")
    def holder() -> None:
        durable.sleep(3600)

    @dur.workflow(name="child")
    def child() -> None:
        pass

    @dur.workflow(name="parent")
    def parent(catch: bool) -> str:
        try:
            child.options(dedup_key="k").start()
        except DuplicateWorkflowError as duplicate:
            if not catch:
                raise
            durable.sleep(60)  # suspends: the next run replays the refused start
            return f"held by {duplicate.workflow_id}"
        return "started"

    holder_id = holder.options(dedup_key="k").start().workflow_id
    cluster.drive()
    caught = parent.start(True)
    uncaught = parent.start(False)
    cluster.drive()
    with pytest.raises(DuplicateWorkflowError) as raised:
        uncaught.result(timeout=5)
    assert raised.value.workflow_id == holder_id
    assert cluster.status(uncaught.workflow_id).status is Status.ERROR

    dur.cancel(holder_id)  # the key is free now, but the recorded refusal stands
    cluster.clock.advance(60)
    cluster.sweep()
    cluster.drive()
    assert caught.result(timeout=5) == f"held by {holder_id}"
    assert [(s.name, s.status) for s in cluster.steps(caught.workflow_id)] == [
        ("start:child", "ERROR"), ("durable.sleep", "SUCCESS")
    ]
    assert dur.list_workflows(name="child") == []
