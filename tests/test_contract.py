"""The core contract, against real worker processes, once per store dialect:
SQLite with the embedded broker and Postgres with Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from durable import Status
from durable.errors import SerializationError
from tests.harness import wait_for
from tests.workflows import effects


def test_ten_step_workflow_started_from_another_process(client, start_worker, effects_dir):
    start_worker()
    handle = client.enqueue("ten_steps")
    result = handle.result(timeout=60)
    assert result == {"sum": sum(i * i for i in range(1, 11)), "squares": [i * i for i in range(1, 11)]}
    status = handle.status()
    assert status.status is Status.SUCCESS
    assert status.recovery_attempts == 0
    steps = client.list_steps(handle.workflow_id)
    assert [s.name for s in steps] == ["numbered_step"] * 10
    assert [s.output for s in steps] == [i * i for i in range(1, 11)]
    assert [k for k, _, _ in effects(handle.workflow_id)] == [f"step{i}" for i in range(1, 11)]


def test_sigkill_of_prefork_child_during_step_5(client, start_worker, effects_dir):
    worker = start_worker()
    handle = client.enqueue("ten_steps", kwargs={"pause_seconds": 30.0, "slow_step": 5})
    wait_for(lambda: any(k == "step5" for k, _, _ in effects(handle.workflow_id)), 60, "step 5 to start")
    (_, child_pid, _), = [e for e in effects(handle.workflow_id) if e[0] == "step5"]
    assert child_pid in worker.children()
    os.kill(child_pid, signal.SIGKILL)

    # the redelivered workflow re-runs step 5 (without the pause: kwargs are
    # the workflow's, so it pauses again; shorten by waiting for the result)
    result = handle.result(timeout=90)
    assert result["sum"] == sum(i * i for i in range(1, 11))
    ran = [k for k, _, _ in effects(handle.workflow_id)]
    for i in range(1, 5):
        assert ran.count(f"step{i}") == 1, ran
    assert 1 <= ran.count("step5") <= 2, ran
    for i in range(6, 11):
        assert ran.count(f"step{i}") == 1, ran
    status = handle.status()
    assert status.recovery_attempts == 1
    step5 = client.list_steps(handle.workflow_id)[4]
    assert step5.crashes == 1
    crash = json.loads(step5.last_crash)
    assert crash["step"] == "numbered_step" and crash["attempt"] == 1
    # the worker's report of the signal can trail the lease expiry under load
    assert "SIGKILL" in crash["cause"] or crash["cause"] == "unknown", crash


def test_sigkill_of_whole_worker_recovers_within_lease_and_sweep(client, start_worker, effects_dir):
    first = start_worker()
    handle = client.enqueue("ten_steps", kwargs={"pause_seconds": 3.0, "slow_step": 3})
    wait_for(lambda: any(k == "step3" for k, _, _ in effects(handle.workflow_id)), 60, "step 3 to start")
    first.kill_all()
    killed_at = time.monotonic()
    start_worker()  # waits until ready
    result = handle.result(timeout=60)
    elapsed = time.monotonic() - killed_at
    assert result["sum"] == sum(i * i for i in range(1, 11))
    # lease 2 s + sweep 0.5 s + the re-run 3 s step + worker start: seconds,
    # not Redis's one-hour visibility timeout
    assert elapsed < 20, elapsed
    ran = [k for k, _, _ in effects(handle.workflow_id)]
    assert ran.count("step1") == 1 and ran.count("step2") == 1
    assert handle.status().recovery_attempts == 1


def test_start_twice_with_one_workflow_id_runs_once(client, start_worker, effects_dir):
    start_worker()
    first = client.enqueue("ten_steps", workflow_id="same-id")
    second = client.enqueue("ten_steps", workflow_id="same-id")
    assert first.workflow_id == second.workflow_id == "same-id"
    assert first.result(timeout=60)["sum"] == 385
    ran = [k for k, _, _ in effects("same-id")]
    assert sorted(ran) == sorted(f"step{i}" for i in range(1, 11))


def test_duplicate_delivery_at_once_runs_each_step_once(client, start_worker, effects_dir):
    start_worker(concurrency=2)
    handle = client.enqueue("ten_steps", kwargs={"pause_seconds": 1.0, "slow_step": 2})
    # the same message, published again while the first delivery runs
    for _ in range(3):
        client.dispatcher.publish(handle.workflow_id, "ten_steps", "celery")
    assert handle.result(timeout=60)["sum"] == 385
    time.sleep(1.0)
    ran = [k for k, _, _ in effects(handle.workflow_id)]
    assert sorted(ran) == sorted(f"step{i}" for i in range(1, 11)), ran


def test_unserializable_argument_writes_nothing(client):
    with pytest.raises(SerializationError, match="threading.Lock|lock"):
        client.enqueue("ten_steps", args=[threading.Lock()], workflow_id="never-written")
    assert client.list_workflows() == []


def test_unknown_workflow_is_recorded_and_worker_keeps_serving(client, start_worker, effects_dir):
    start_worker()
    bad = client.enqueue("no_such_workflow", args=[1], allow_unknown=True)  # the worker's side of it
    with pytest.raises(Exception, match="no_such_workflow"):
        bad.result(timeout=60)
    status = bad.status()
    assert status.status is Status.ERROR
    assert status.error is not None and status.error.type.endswith("UnknownWorkflowError")
    good = client.enqueue("ten_steps")
    assert good.result(timeout=60)["sum"] == 385


def test_workflow_exception_ends_error_and_result_reraises(client, start_worker):
    start_worker()
    handle = client.enqueue("fails", args=["boom"])
    with pytest.raises(ValueError, match="boom"):
        handle.result(timeout=60)
    assert handle.status().status is Status.ERROR
    assert handle.status().recovery_attempts == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_flushed_redis_loses_no_workflow(backend, client, start_worker, effects_dir):
    """Every broker message gone (FLUSHALL) while workflows are pending, running
    and queued: the database is the truth and the sweeper publishes them again."""
    import redis as redis_client

    start_worker(concurrency=1)
    running = client.enqueue("ten_steps", kwargs={"pause_seconds": 2.0, "slow_step": 2})
    wait_for(lambda: any(k == "step2" for k, _, _ in effects(running.workflow_id)), 30, "step 2")
    queued = [client.enqueue("ten_steps") for _ in range(5)]
    redis_client.Redis.from_url(backend.broker_url).flushall()
    for handle in [running, *queued]:
        assert handle.result(timeout=60)["sum"] == 385
    for handle in queued:
        ran = [k for k, _, _ in effects(handle.workflow_id)]
        assert sorted(ran) == sorted(f"step{i}" for i in range(1, 11))


def test_awaiting_a_child_with_a_timeout_inside_a_workflow(client, start_worker):
    start_worker()
    quick = client.enqueue("await_child_with_timeout", args=[0.1, 30.0])
    assert quick.result(timeout=60)["result"] == "done"

    slow = client.enqueue("await_child_with_timeout", args=[8.0, 1.0])
    outcome = slow.result(timeout=60)
    assert outcome["result"] == "timed out" and "still" in outcome["error"]
    # the parent ended at its deadline, while the child was still running
    assert client.get(outcome["child"]).status is not Status.SUCCESS
    steps = {s.name: s for s in client.list_steps(slow.workflow_id)}
    assert steps["durable.result"].status == "ERROR"
    assert steps["durable.result"].error.type.endswith("TimeoutError")
    assert "durable.result.deadline" in steps
    assert client.handle(outcome["child"]).result(timeout=60) == "done"  # the child goes on


def test_awaiting_a_workflow_that_is_not_a_child_is_never_left_waiting(client, start_worker):
    start_worker()
    other = client.enqueue("slow_workflow", args=["other", 3.0])
    waiter = client.enqueue("await_other", args=[other.workflow_id])
    assert waiter.result(timeout=60) == "other"
    assert other.status().completed_at <= waiter.status().completed_at
