"""Suspension and wake-up: durable sleeps, children, messages. A suspended
workflow holds no worker; what ends its wait publishes it again."""

from __future__ import annotations

import pytest

import durable
from durable import Status
from durable.errors import AwaitedWorkflowMaxRecoveryAttemptsExceededError

from .conftest import Cluster, SimulatedCrash


def test_a_long_sleep_suspends_until_its_recorded_wake_up(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def sleeper() -> str:
        durable.sleep(60)
        return "awake"

    handle = sleeper.start()
    cluster.drive()
    steps = cluster.steps(handle.workflow_id)
    assert [s.name for s in steps] == ["durable.sleep"]
    assert steps[0].output == cluster.clock.now_ms() + 60_000
    cluster.clock.advance(59.9)
    assert cluster.sweep() == 0
    cluster.clock.advance(0.1)
    assert cluster.sweep() == 1
    cluster.drive()
    assert handle.result(timeout=5) == "awake"


def test_a_short_sleep_waits_in_the_worker(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def napper() -> str:
        durable.sleep(1.5)
        return "done"

    handle = napper.start()
    assert cluster.drive() == ["executed"]
    assert handle.result(timeout=5) == "done" and cluster.clock.sleeps == [1.5]


def test_a_child_wakes_its_waiting_parent_when_it_ends(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def child(n: int) -> int:
        return n * 2

    @dur.workflow()
    def parent() -> int:
        handles = [child.start(n) for n in (1, 2, 3)]
        return sum(durable.gather(*handles))

    handle = parent.start()
    outcomes = cluster.drive()
    # the parent suspends on its first child, each child ends and wakes it
    assert outcomes.count("executed") >= 4
    assert handle.result(timeout=5) == 12
    children = dur.list_workflows(parent_workflow_id=handle.workflow_id)
    assert sorted(c.workflow_id for c in children) == [f"{handle.workflow_id}-{i}" for i in (0, 1, 2)]


def test_a_quarantined_child_fails_its_parents_await(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step()
    def kills_its_worker() -> None:
        raise SimulatedCrash()

    @dur.workflow(max_recovery_attempts=1)
    def poison() -> None:
        kills_its_worker()

    @dur.workflow()
    def waits_for_poison() -> str:
        try:
            poison.start().result()
        except AwaitedWorkflowMaxRecoveryAttemptsExceededError:
            return "child quarantined"
        return "unexpected"

    handle = waits_for_poison.start()
    cluster.drive()
    cluster.recover()  # recovery 1: the step kills the worker again
    cluster.recover()  # recovery 2 > max 1: quarantined, the parent is woken
    child_id = f"{handle.workflow_id}-0"
    assert cluster.status(child_id).status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED
    assert handle.result(timeout=5) == "child quarantined"


def test_a_deadline_on_an_await_is_recorded_and_raises_timeout(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step()
    def stuck() -> None:
        raise SimulatedCrash()

    @dur.workflow(max_recovery_attempts=100)
    def slow_child() -> None:
        stuck()

    @dur.workflow()
    def impatient() -> str:
        try:
            slow_child.start().result(timeout=30)
        except TimeoutError:
            return "gave up"
        return "finished"

    handle = impatient.start()
    cluster.drive()
    cluster.clock.advance(30)
    cluster.sweep()
    cluster.drive()
    assert handle.result(timeout=5) == "gave up"


def test_recv_suspends_until_a_message_arrives(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def inbox() -> object:
        return durable.recv("orders", timeout=3600)

    handle = inbox.start()
    cluster.drive()
    names = [s.name for s in cluster.steps(handle.workflow_id)]
    assert names == ["durable.recv.deadline"]  # waiting, suspended
    dur.send(handle.workflow_id, {"order": 7}, topic="orders")
    assert cluster.dispatcher.pending  # the send rang the doorbell
    cluster.drive()
    assert handle.result(timeout=5) == {"order": 7}


def test_recv_times_out_at_its_recorded_deadline(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def lonely() -> object:
        return durable.recv(timeout=120)

    handle = lonely.start()
    cluster.drive()
    cluster.clock.advance(120)
    cluster.sweep()
    cluster.drive()
    assert handle.result(timeout=5) is None


def test_events_are_published_and_awaited(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow()
    def publisher() -> None:
        durable.set_event("stage", "built")

    @dur.workflow()
    def watcher(target: str) -> object:
        return durable.get_event(target, "stage", timeout=600)

    watching = watcher.start("pub-1")
    cluster.drive()
    assert cluster.status(watching.workflow_id).status == Status.PENDING
    publisher.options(workflow_id="pub-1").start()
    cluster.drive()
    assert watching.result(timeout=5) == "built"
    assert dur.get_event("pub-1", "stage", timeout=0) == "built"
    assert dur.get_event("pub-1", "never-set", timeout=0) is None


def test_a_quarantine_wakes_the_parent_even_if_its_worker_dies_right_after(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim that quarantines also records why and wakes the parent, in
    its own transaction: a worker lost right after that claim leaves nobody
    waiting and nothing half-written."""
    dur = cluster.dur

    @dur.step()
    def kills_its_worker() -> None:
        raise SimulatedCrash()

    @dur.workflow(max_recovery_attempts=0)
    def poison() -> None:
        kills_its_worker()

    @dur.workflow()
    def parent() -> str:
        try:
            poison.start().result()
        except AwaitedWorkflowMaxRecoveryAttemptsExceededError:
            return "child quarantined"
        return "unexpected"

    handle = parent.start()
    cluster.drive()

    def lost_worker(*args: object, **kwargs: object) -> None:
        raise SimulatedCrash()

    with monkeypatch.context() as patch:
        patch.setattr(dur.runner, "_quarantine", lost_worker)
        assert cluster.recover() == ["crashed"]  # quarantined by the claim, then the worker died
    child = cluster.status(f"{handle.workflow_id}-0")
    assert child.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED
    assert child.error is not None and "lost its worker 1 times" in child.error.message
    assert "last in step #0" in child.error.message
    cluster.sweep()  # the parent's wake-up is in the database: the sweeper publishes it
    cluster.drive()
    assert handle.result(timeout=5) == "child quarantined"
