"""Failure semantics against real workers on Postgres + Redis: step retries
and back-off, fallbacks, memory exhaustion, quarantine, the in-limbo parent,
deduplication keys, cancellation of awaited children."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from durable import Status
from durable.errors import (
    AwaitedWorkflowCancelledError,
    AwaitedWorkflowMaxRecoveryAttemptsExceededError,
    DuplicateWorkflowError,
)
from tests.harness import Backend, wait_for
from tests.workflows import effects


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    """This suite runs on Postgres and Redis only."""
    return pg_backend


def test_step_failing_twice_then_succeeding_follows_its_backoff(client, start_worker, effects_dir):
    start_worker()
    handle = client.enqueue("retry_then_succeed", args=[2])
    assert handle.result(timeout=60) == "ok after 3 attempts"
    (step,) = client.list_steps(handle.workflow_id)
    assert step.attempts == 3 and step.status == "SUCCESS"
    assert len(step.attempt_errors) == 2
    failed_at = [e["at_ms"] for e in step.attempt_errors]
    completed_ms = step.completed_at.timestamp() * 1000
    # interval 0.5 s, backoff 2: 0.5 s before retry 1, 1.0 s before retry 2
    assert 450 <= failed_at[1] - failed_at[0] <= 1500, failed_at
    assert 950 <= completed_ms - failed_at[1] <= 2500, (failed_at, completed_ms)
    assert [k for k, _, _ in effects(handle.workflow_id)] == ["flaky"] * 3


def test_exhausted_retries_reach_the_workflow_as_a_catchable_error(client, start_worker, effects_dir):
    start_worker()
    handle = client.enqueue("charge_with_fallback")
    result = handle.result(timeout=60)
    assert result["fallback"] is True
    assert result["step"] == "gateway_down" and result["attempts"] == 3
    assert result["errors"] == [f"gateway down (attempt {i})" for i in range(3)]
    (step,) = client.list_steps(handle.workflow_id)
    assert step.status == "ERROR" and step.error.type.endswith("MaxStepRetriesExceededError")


def test_long_backoff_suspends_and_frees_the_worker(client, start_worker, effects_dir):
    start_worker(concurrency=1)
    slow = client.enqueue("long_backoff")
    wait_for(lambda: client.list_steps(slow.workflow_id), 30, "the first failed attempt")
    # with one worker slot, another workflow runs while the first waits out its 4 s back-off
    quick = client.enqueue("ten_steps")
    assert quick.result(timeout=30)["sum"] == 385
    assert slow.status().status is Status.PENDING
    assert slow.result(timeout=60) == "second attempt"
    assert quick.status().completed_at < slow.status().completed_at


def test_step_timeout_fails_the_attempt(client, start_worker, effects_dir):
    start_worker()
    handle = client.enqueue("times_out_step")
    assert handle.result(timeout=60) == "StepTimeoutError | StepTimeoutError"


def test_retries_interrupted_by_sigkill_resume_the_attempt_count(client, start_worker, effects_dir):
    start_worker()
    handle = client.enqueue("retries_interrupted")
    assert handle.result(timeout=60) == 2
    attempts_seen = [a for kind, _, a in effects(handle.workflow_id) if kind == "mid_retry"]
    assert attempts_seen == [0, 1, 2, 2], attempts_seen  # not back to 0 after the kill
    (step,) = client.list_steps(handle.workflow_id)
    assert step.attempts == 3 and step.crashes == 1
    assert handle.status().recovery_attempts == 1


@pytest.fixture
def memory_limit_env(tmp_path: Path):
    """A memory cgroup of 200 MB for the worker's children (the kernel OOM-kills
    past it); an address-space limit where no cgroup can be made. A test asks
    for it before start_worker, so that the worker is gone when it is removed."""
    base = Path("/sys/fs/cgroup/memory")
    group = base / f"durable-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(200 * 1024 * 1024))
    except OSError:
        yield {"DURABLE_TEST_MEMORY_RLIMIT_MB": "1500"}
        return
    yield {"DURABLE_TEST_MEMORY_CGROUP": str(group)}
    for _ in range(50):
        try:
            group.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def test_memory_exhaustion_recovers_when_the_step_later_succeeds(client, memory_limit_env, start_worker, effects_dir):
    start_worker(concurrency=1, **memory_limit_env)
    handle = client.enqueue("memory_hog", args=[2000, 1])  # starved once, fed on the first recovery
    assert handle.result(timeout=90) == ["prepared", "fed"]
    ran = [k for k, _, _ in effects(handle.workflow_id)]
    assert ran == ["prepare", "hungry", "hungry"], ran
    status = handle.status()
    assert status.recovery_attempts == 1
    hungry = client.list_steps(handle.workflow_id)[1]
    assert hungry.crashes == 1
    assert json.loads(hungry.last_crash)["step"] == "hungry"


def test_memory_exhaustion_every_time_is_quarantined(client, memory_limit_env, start_worker, effects_dir):
    start_worker(concurrency=1, **memory_limit_env)
    handle = client.enqueue("memory_hog", args=[2000, 99])
    with pytest.raises(AwaitedWorkflowMaxRecoveryAttemptsExceededError):
        handle.result(timeout=120)
    status = handle.status()
    assert status.status is Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED
    ran = [k for k, _, _ in effects(handle.workflow_id)]
    assert ran.count("prepare") == 1
    assert ran.count("hungry") == status.max_recovery_attempts + 1 == 3
    assert "hungry" in status.error.message
    # the cause: the worker's report of the kernel's SIGKILL, or, when the
    # report trails the lease, the expired lease
    assert "SIGKILL" in status.error.message or "lease expired" in status.error.message
    hungry = client.list_steps(handle.workflow_id)[1]
    assert hungry.crashes == 3
    assert json.loads(hungry.last_crash)["step"] == "hungry"


def test_parent_of_a_poisoned_child_is_never_left_in_limbo(client, start_worker, effects_dir):
    """Scenario S5: the child kills its worker every time; it is quarantined,
    the parent's await raises, the parent ends, and the dedup key is free."""
    start_worker()
    parent = client.enqueue("limbo_parent", args=[2], dedup_key="6/5", queue="celery")
    with pytest.raises(AwaitedWorkflowMaxRecoveryAttemptsExceededError):
        parent.result(timeout=120)
    assert parent.status().status is Status.ERROR
    assert parent.status().error.type.endswith("AwaitedWorkflowMaxRecoveryAttemptsExceededError")
    children = client.list_workflows(parent_workflow_id=parent.workflow_id)
    assert len(children) == 2
    assert {c.status for c in children} == {Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED}
    assert client.list_workflows(status=["PENDING", "ENQUEUED"]) == []
    again = client.enqueue("ten_steps", dedup_key="6/5", queue="celery")
    assert again.result(timeout=60)["sum"] == 385


def test_dedup_key_is_held_until_terminal(client, start_worker, effects_dir):
    holder = client.enqueue("slow_workflow", args=["x", 2.0], dedup_key="order-7")
    with pytest.raises(DuplicateWorkflowError) as raised:
        client.enqueue("slow_workflow", args=["y", 0.0], dedup_key="order-7")
    assert raised.value.workflow_id == holder.workflow_id
    same = client.enqueue("slow_workflow", args=["y", 0.0], dedup_key="order-7", on_duplicate="return_existing")
    assert same.workflow_id == holder.workflow_id
    other_queue = client.enqueue("slow_workflow", args=["z", 0.0], dedup_key="order-7", queue="elsewhere")
    assert other_queue.workflow_id != holder.workflow_id
    start_worker()
    assert holder.result(timeout=60) == "x"
    released = client.enqueue("slow_workflow", args=["w", 0.0], dedup_key="order-7")
    assert released.result(timeout=60) == "w"


def test_awaiting_a_cancelled_child_raises_in_the_parent_and_the_handle(client, start_worker, effects_dir):
    start_worker()
    parent = client.enqueue("awaits_sleeper", args=[120.0])
    child_id = f"{parent.workflow_id}-0"
    def child_sleeping() -> bool:
        rows = client.list_workflows(parent_workflow_id=parent.workflow_id)
        return bool(rows) and bool(client.list_steps(child_id))

    wait_for(child_sleeping, 30, "the child to start sleeping")
    client.cancel(child_id)
    with pytest.raises(AwaitedWorkflowCancelledError):
        client.handle(child_id).result(timeout=5)
    with pytest.raises(AwaitedWorkflowCancelledError):
        parent.result(timeout=30)
    assert parent.status().status is Status.ERROR
