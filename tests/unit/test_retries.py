"""Step retries: back-off from the policy, waited on the clock, counted in
the database so a crash mid-retries resumes the count."""

from __future__ import annotations

import pytest

from durable import Status
from durable.errors import MaxStepRetriesExceededError

from .conftest import Cluster, SimulatedCrash


def test_retries_wait_the_policys_back_off_and_record_each_attempt(cluster: Cluster) -> None:
    dur = cluster.dur
    attempts: list[int] = []

    @dur.step(retries=3, interval=0.5, backoff=2.0)
    def flaky() -> str:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError(f"down #{len(attempts)}")
        return "up"

    @dur.workflow()
    def calls_flaky() -> str:
        return flaky()

    handle = calls_flaky.start()
    cluster.drive()
    assert handle.result(timeout=5) == "up"
    assert cluster.clock.sleeps == [0.5, 1.0]  # inline waits: short back-offs keep the slot
    step = cluster.steps(handle.workflow_id)[0]
    assert step.attempts == 3 and step.status == "SUCCESS"
    assert [e["message"] for e in step.attempt_errors or []] == ["down #1", "down #2"]


def test_exhausted_retries_end_with_max_step_retries_exceeded(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step(retries=2, interval=0.1)
    def always_down() -> None:
        raise ConnectionError("down")

    @dur.workflow()
    def doomed() -> None:
        always_down()

    handle = doomed.start()
    cluster.drive()
    with pytest.raises(MaxStepRetriesExceededError) as raised:
        handle.result(timeout=5)
    assert raised.value.attempts == 3
    assert cluster.status(handle.workflow_id).status == Status.ERROR


def test_errors_not_to_retry_fail_at_once(cluster: Cluster) -> None:
    dur = cluster.dur
    calls = []

    @dur.step(retries=5, dont_retry_on=(ValueError,))
    def refuses() -> None:
        calls.append(1)
        raise ValueError("fraud detected")

    @dur.workflow()
    def payment() -> None:
        refuses()

    handle = payment.start()
    cluster.drive()
    with pytest.raises(ValueError, match="fraud detected"):
        handle.result(timeout=5)
    assert calls == [1] and cluster.clock.sleeps == []


def test_a_long_back_off_suspends_and_the_sweeper_wakes_it(cluster: Cluster) -> None:
    dur = cluster.dur
    attempts: list[int] = []

    @dur.step(retries=1, interval=30.0)
    def slow_to_recover() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("down")
        return "ok"

    @dur.workflow()
    def patient() -> str:
        return slow_to_recover()

    handle = patient.start()
    assert cluster.drive() == ["executed"]  # suspended: the worker slot is free
    assert cluster.status(handle.workflow_id).status == Status.PENDING
    cluster.clock.advance(29)
    assert cluster.sweep() == 0
    cluster.clock.advance(1)
    assert cluster.sweep() == 1
    cluster.drive()
    assert handle.result(timeout=5) == "ok" and len(attempts) == 2


def test_a_crash_between_retries_resumes_the_attempt_count(cluster: Cluster) -> None:
    dur = cluster.dur
    attempts: list[int] = []

    @dur.step(retries=2, interval=0.1)
    def flaky_then_killed() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("down")
        if len(attempts) == 2:
            raise SimulatedCrash()
        return "ok"

    @dur.workflow()
    def resumes() -> str:
        return flaky_then_killed()

    handle = resumes.start()
    cluster.drive()
    cluster.recover()
    assert handle.result(timeout=5) == "ok"
    step = cluster.steps(handle.workflow_id)[0]
    # attempt 1 failed (recorded), attempt 2 was killed (a crash, not an attempt), attempt 3 won
    assert step.attempts == 2 and step.crashes == 1
