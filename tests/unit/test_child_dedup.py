"""A child started with a dedup key that another active workflow holds: the
parent gets DuplicateWorkflowError (a workflow may catch it), or the
holder's handle with on_duplicate="return_existing"; the outcome is
checkpointed, so a replay gives the same. On SQLite the conflict used to
deadlock: the start held the write lock and looked the holder up in a
second transaction, which waited for it."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

import durable

from durable import Status
from durable.context import in_workflow_code
from durable.errors import DuplicateWorkflowError
from durable.starting import new_workflow_row

from .conftest import Cluster


class WaitedForTheDatabase(BaseException):
    """The start waited out a "database is locked": on SQLite, the deadlock."""


@pytest.fixture
def no_waiting(cluster: Cluster) -> Iterator[None]:
    """A lock wait of 0.2 s instead of 60 s, and no retrying it: a start
    that waits for the database at all fails the test at once."""
    engine = cluster.dur.store.db.engine
    engine.dispose()

    def short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    from sqlalchemy import event

    event.listen(engine, "connect", short_busy_timeout)

    def refuse(seconds: float) -> None:
        raise WaitedForTheDatabase(f"waited {seconds:.2f} s for the database")

    cluster.clock.sleep = refuse  # type: ignore[method-assign]
    yield


def _holder(cluster: Cluster) -> str:
    """A workflow that holds dedup key "k" (suspended in a long sleep)."""
    dur = cluster.dur

    @dur.workflow(name="holder")
    def holder() -> str:
        durable.sleep(3600)
        return "the holder's result"

    holder_id = holder.options(dedup_key="k").start().workflow_id
    cluster.drive()
    assert cluster.status(holder_id).status is Status.PENDING
    return holder_id


def test_a_held_dedup_key_raises_duplicate_workflow_error_in_the_parent(
    cluster: Cluster, no_waiting: None
) -> None:
    dur = cluster.dur
    holder_id = _holder(cluster)

    @dur.workflow(name="child")
    def child() -> str:
        return "ran"

    @dur.workflow()
    def parent() -> str:
        try:
            child.options(dedup_key="k").start()
        except DuplicateWorkflowError as duplicate:
            return f"held by {duplicate.workflow_id}"
        return "started"

    handle = parent.start()
    cluster.drive()
    assert handle.result(timeout=5) == f"held by {holder_id}"
    steps = cluster.steps(handle.workflow_id)
    assert [(s.name, s.status) for s in steps] == [("start:child", "ERROR")]
    assert dur.list_workflows(parent_workflow_id=handle.workflow_id) == []


def test_the_refused_start_is_replayed_as_the_same_error(cluster: Cluster, no_waiting: None) -> None:
    dur = cluster.dur
    holder_id = _holder(cluster)

    @dur.workflow(name="child")
    def child() -> None:
        pass

    @dur.workflow()
    def parent() -> str:
        try:
            child.options(dedup_key="k").start()
        except DuplicateWorkflowError as duplicate:
            seen = duplicate.workflow_id
        durable.sleep(60)  # suspends: the next run replays the refused start
        return f"held by {seen}"

    handle = parent.start()
    cluster.drive()
    dur.cancel(holder_id)  # the key is free now, but the recorded refusal stands
    cluster.clock.advance(60)
    cluster.sweep()
    cluster.drive()
    assert handle.result(timeout=5) == f"held by {holder_id}"
    assert dur.list_workflows(parent_workflow_id=handle.workflow_id) == []


def test_an_uncaught_duplicate_ends_the_parent_with_duplicate_workflow_error(
    cluster: Cluster, no_waiting: None
) -> None:
    dur = cluster.dur
    holder_id = _holder(cluster)

    @dur.workflow(name="child")
    def child() -> None:
        pass

    @dur.workflow()
    def parent() -> None:
        child.options(dedup_key="k").start()

    handle = parent.start()
    cluster.drive()
    with pytest.raises(DuplicateWorkflowError) as raised:
        handle.result(timeout=5)
    assert raised.value.workflow_id == holder_id and raised.value.dedup_key == "k"
    assert cluster.status(handle.workflow_id).status is Status.ERROR


def test_return_existing_gives_the_holders_handle(cluster: Cluster, no_waiting: None) -> None:
    dur = cluster.dur
    holder_id = _holder(cluster)

    @dur.workflow()
    def parent() -> tuple[str, str]:
        execution = in_workflow_code()
        assert execution is not None
        row = new_workflow_row(dur.settings, "holder", [], {}, workflow_id="", dedup_key="k", clock=dur.clock)
        child_id = execution.start_child(row, "holder", on_duplicate="return_existing")
        return child_id, dur.handle(child_id).result()

    handle = parent.start()
    cluster.drive()
    assert cluster.status(handle.workflow_id).status is Status.PENDING  # awaiting the holder
    for _ in range(3):  # the holder wakes and ends; the parent, polling it, sees that
        cluster.clock.advance(3600)
        cluster.sweep()
        cluster.drive()
    assert handle.result(timeout=5) == (holder_id, "the holder's result")
    steps = cluster.steps(handle.workflow_id)
    assert steps[0].name == "start:holder" and steps[0].child_workflow_id == holder_id


def test_return_existing_through_the_public_options(cluster: Cluster, no_waiting: None) -> None:
    dur = cluster.dur
    holder_id = _holder(cluster)
    holder = dur.registry["holder"]

    @dur.workflow(name="parent_returning_existing")
    def parent() -> str:
        return holder.options(dedup_key="k", on_duplicate="return_existing").start().workflow_id

    handle = parent.start()
    cluster.drive()
    assert handle.result(timeout=0) == holder_id
