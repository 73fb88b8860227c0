"""Retention: old ended workflows go with everything they wrote; running
ones, and whole trees with a running member, stay."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

import durable
from durable import Settings, Status
from durable.schema import events, messages, steps

from .conftest import Cluster

DAY = 86_400


def _count(cluster: Cluster, table: object, workflow_id: str) -> int:
    with cluster.dur.store.db.begin() as conn:
        return int(conn.execute(
            select(func.count()).select_from(table).where(table.c.workflow_id == workflow_id)  # type: ignore[attr-defined]
        ).scalar_one())


def test_gc_deletes_old_ended_trees_with_what_they_wrote_and_nothing_else(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @dur.workflow(name="child")
    def child() -> int:
        return add(1, 1)

    @dur.workflow(name="parent")
    def parent() -> int:
        durable.set_event("progress", "half")
        return add(2, 2) + child.start().result()

    @dur.workflow(name="waits")
    def waits() -> str:
        return str(durable.recv(timeout=30 * DAY))

    old = parent.start()
    running = waits.start()
    cluster.drive()
    dur.send(running.workflow_id, "not yet consumed", topic="later")
    assert old.result(timeout=0) == 6
    children = [w.workflow_id for w in dur.list_workflows(name="child")]
    cluster.clock.advance(8 * DAY)
    recent = parent.start()
    cluster.drive()

    assert dur.gc("7d") == 2  # the old parent and its child
    assert dur.list_workflows(name="child") != [] and len(dur.list_workflows(name="parent")) == 1
    for workflow_id in [old.workflow_id, *children]:
        with pytest.raises(Exception):
            dur.get(workflow_id)
        assert _count(cluster, steps, workflow_id) == 0 and _count(cluster, events, workflow_id) == 0
    assert dur.get(recent.workflow_id).status is Status.SUCCESS
    assert dur.get(running.workflow_id).status is Status.PENDING  # running: never touched
    assert _count(cluster, messages, running.workflow_id) == 1


def test_a_tree_with_a_running_child_is_kept_whole(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow(name="slow_child")
    def slow_child() -> None:
        durable.sleep(30 * DAY)

    @dur.workflow(name="leaves_a_child")
    def leaves_a_child() -> str:
        return slow_child.start().workflow_id  # not awaited: it runs on

    handle = leaves_a_child.start()
    cluster.drive()
    cluster.clock.advance(10 * DAY)
    assert dur.gc(7 * DAY) == 0
    assert dur.get(handle.workflow_id).status is Status.SUCCESS


def test_gc_by_status_and_bad_arguments(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow(name="fails")
    def fails() -> None:
        raise ValueError("no")

    @dur.workflow(name="works")
    def works() -> str:
        return "yes"

    bad, good = fails.start(), works.start()
    cluster.drive()
    cluster.clock.advance(2 * DAY)
    assert dur.gc("1d", status="ERROR") == 1
    assert dur.get(good.workflow_id).status is Status.SUCCESS
    with pytest.raises(Exception):
        dur.get(bad.workflow_id)
    for older_than in ("soon", "-1d", 0, "0d"):
        with pytest.raises(ValueError):
            dur.gc(older_than)
    with pytest.raises(ValueError, match="ended statuses"):
        dur.gc("1d", status="PENDING")


def test_retention_is_a_checked_setting() -> None:
    assert Settings(retention="30d").validated().retention_seconds == 30 * DAY
    assert Settings().retention_seconds is None
    with pytest.raises(ValueError, match="DURABLE_RETENTION"):
        Settings.from_env({"DURABLE_RETENTION": "a month"})
