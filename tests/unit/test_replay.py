"""Replay after a crash skips checkpointed steps; non-determinism is caught."""

from __future__ import annotations

import pytest

import durable
from durable import Status
from durable.errors import NonDeterministicWorkflowError

from .conftest import Cluster, SimulatedCrash


def test_a_crashed_workflow_replays_and_skips_completed_steps(cluster: Cluster) -> None:
    dur = cluster.dur
    calls: list[str] = []
    crash_in = {"b"}

    @dur.step()
    def work(label: str) -> str:
        calls.append(label)
        if label in crash_in:
            crash_in.discard(label)
            raise SimulatedCrash()
        return label.upper()

    @dur.workflow()
    def three() -> list[str]:
        return [work(x) for x in ("a", "b", "c")]

    handle = three.start()
    assert cluster.drive() == ["crashed"]
    assert calls == ["a", "b"]
    assert cluster.status(handle.workflow_id).status == Status.PENDING

    assert cluster.recover() == ["executed"]
    assert calls == ["a", "b", "b", "c"]  # "a" came from its checkpoint
    status = cluster.status(handle.workflow_id)
    assert status.status == Status.SUCCESS and status.output == ["A", "B", "C"]
    assert status.recovery_attempts == 1
    crashed = cluster.steps(handle.workflow_id)[1]
    assert crashed.name.endswith("work") and crashed.crashes == 1 and crashed.attempts == 1


def test_a_message_for_a_workflow_that_runs_elsewhere_is_skipped(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step()
    def hang() -> None:
        raise SimulatedCrash()

    @dur.workflow()
    def held() -> None:
        hang()

    handle = held.start()
    cluster.drive()
    # the lease is still live: a duplicate delivery does nothing
    assert dur.runner.execute(handle.workflow_id, "held") == "skipped"
    assert cluster.status(handle.workflow_id).recovery_attempts == 0


def test_replay_returns_recorded_time_and_values(cluster: Cluster) -> None:
    dur = cluster.dur
    seen: list[float] = []

    @dur.step()
    def boom() -> None:
        if len(seen) == 1:
            raise SimulatedCrash()

    @dur.workflow()
    def timed() -> float:
        stamp = durable.now()
        seen.append(stamp)
        boom()
        return stamp

    handle = timed.start()
    cluster.drive()
    started = cluster.clock.now_ms() / 1000
    cluster.recover()  # the clock moved on by a lease period
    assert seen[0] == seen[1] == started
    assert handle.result(timeout=5) == started


def test_a_changed_workflow_fails_with_non_determinism(cluster: Cluster) -> None:
    dur = cluster.dur
    version = {"n": 1}

    @dur.step()
    def first() -> int:
        return 1

    @dur.step()
    def other() -> int:
        return 2

    @dur.step()
    def crash() -> None:
        if version["n"] == 1:
            raise SimulatedCrash()

    @dur.workflow()
    def evolving() -> int:
        value = first() if version["n"] == 1 else other()
        crash()
        return value

    handle = evolving.start()
    cluster.drive()
    version["n"] = 2  # a deploy changed the code under the running workflow
    cluster.recover()
    status = cluster.status(handle.workflow_id)
    assert status.status == Status.ERROR
    assert status.error is not None and status.error.type.endswith("NonDeterministicWorkflowError")
    with pytest.raises(NonDeterministicWorkflowError, match="first.*other|other.*first"):
        handle.result(timeout=5)
