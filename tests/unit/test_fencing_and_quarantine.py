"""Fencing: an execution whose lease was taken over writes nothing more.
Quarantine: a workflow that keeps losing its worker ends, and its dedup key
is free again."""

from __future__ import annotations

from typing import Any

import pytest

from durable import Status
from durable.engine import Collaborators, Execution, Fenced
from durable.errors import (
    AwaitedWorkflowMaxRecoveryAttemptsExceededError,
    DuplicateWorkflowError,
    UnknownWorkflowError,
)
from durable.records import StepStatus
from durable.starting import new_workflow_row, start_workflow

from .conftest import Cluster, SimulatedCrash


def _claim(cluster: Cluster, workflow_id: str, owner: str) -> Any:
    store = cluster.dur.store
    lease_ms = int(cluster.dur.settings.lease_seconds * 1000)
    return store.claim(workflow_id, owner, cluster.clock.now_ms(), lease_ms, name_hint="fenced")


def _execution(cluster: Cluster, claim: Any, owner: str) -> Execution:
    dur = cluster.dur
    return Execution(claim, owner, Collaborators(dur.store, cluster.dispatcher, dur.settings, cluster.clock))


def test_a_zombie_execution_is_fenced_out_by_the_epoch(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.workflow(name="fenced")
    def fenced() -> None:
        pass

    handle = fenced.start()
    zombie = _execution(cluster, _claim(cluster, handle.workflow_id, "host-a:1"), "host-a:1")
    cluster.clock.advance(dur.settings.lease_seconds + 1)  # host-a froze; its lease ran out
    winner_claim = _claim(cluster, handle.workflow_id, "host-b:1")
    assert winner_claim.epoch == zombie.epoch + 1 and winner_claim.recovered
    winner = _execution(cluster, winner_claim, "host-b:1")

    first = winner.reserve("step")
    assert winner.record(winner.outcome(first, StepStatus.SUCCESS, output='"winner"')) is None
    # the zombie wakes up: the step it computed is the winner's now ...
    zombie_first = zombie.reserve("step")
    recorded = zombie.record(zombie.outcome(zombie_first, StepStatus.SUCCESS, output='"zombie"'))
    assert recorded is not None and recorded["output"] == '"winner"'
    # ... and a step the winner has not written is refused: the zombie stops
    zombie_second = zombie.reserve("next")
    with pytest.raises(Fenced):
        zombie.record(zombie.outcome(zombie_second, StepStatus.SUCCESS, output='"late"'))
    assert [s.output for s in cluster.steps(handle.workflow_id)] == ["winner"]


def test_a_cancelled_workflow_stops_its_execution_at_the_next_step(cluster: Cluster) -> None:
    dur = cluster.dur
    ran = []

    @dur.step()
    def one() -> None:
        ran.append("one")
        dur.cancel(handle_ids[0])

    @dur.step()
    def two() -> None:
        ran.append("two")

    @dur.workflow()
    def cancellable() -> None:
        one()
        two()

    handle_ids: list[str] = []
    handle = cancellable.start()
    handle_ids.append(handle.workflow_id)
    cluster.drive()
    assert ran == ["one"]  # the checkpoint of "one" was fenced: nothing after it ran
    assert cluster.status(handle.workflow_id).status == Status.CANCELLED


def test_a_poison_workflow_is_quarantined_and_releases_its_dedup_key(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step()
    def segfault() -> None:
        raise SimulatedCrash()

    @dur.workflow(max_recovery_attempts=2)
    def poison(batch: str) -> None:
        segfault()

    handle = poison.options(dedup_key="6/5").start("6/5")
    with pytest.raises(DuplicateWorkflowError):
        poison.options(dedup_key="6/5").start("6/5")
    cluster.drive()
    assert cluster.recover() == ["crashed"]
    assert cluster.recover() == ["crashed"]
    assert cluster.recover() == ["quarantined"]
    status = cluster.status(handle.workflow_id)
    assert status.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED and status.recovery_attempts == 3
    with pytest.raises(AwaitedWorkflowMaxRecoveryAttemptsExceededError, match="lost its worker 3 times"):
        handle.result(timeout=5)
    assert cluster.steps(handle.workflow_id)[0].crashes == 3
    again = poison.options(dedup_key="6/5").start("6/5")  # the key is free
    assert again.workflow_id != handle.workflow_id


def test_an_unknown_workflow_name_ends_in_error(cluster: Cluster) -> None:
    dur = cluster.dur
    row = new_workflow_row(dur.settings, "never_registered", [], {}, clock=cluster.clock)
    workflow_id = start_workflow(dur.store, cluster.dispatcher, row)
    assert cluster.drive() == ["unknown"]
    with pytest.raises(UnknownWorkflowError, match="never_registered"):
        dur.handle(workflow_id).result(timeout=5)
