"""Sagas and circuit breakers across real worker processes, Postgres and
Redis: compensations in reverse order, once each, also through a SIGKILL
in the middle of compensating; a breaker shared by two workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from durable import Status
from tests.harness import wait_for
from tests.saga_workflows import calls


@pytest.fixture
def backend(pg_backend):
    return pg_backend


def test_a_saga_undoes_completed_steps_in_reverse_once_each(client, start_worker):
    start_worker()
    handle = client.enqueue("saga.checkout", args=["order-1", 10.0])
    with pytest.raises(RuntimeError, match="no courier today"):
        handle.result(timeout=60)
    assert [what for what, _ in calls("order-1")] == ["reserve", "charge", "ship", "refund", "release"]
    assert client.get(handle.workflow_id).status is Status.ERROR


def test_a_worker_killed_while_compensating_resumes_without_repeating_a_compensation(client, start_worker):
    start_worker()
    handle = client.enqueue("saga.checkout", args=["order-2", 5.0, 30.0])
    victim = wait_for(lambda: next((pid for w, pid in calls("order-2") if w == "release"), None),
                      60, "the first step's compensation to start")
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="no courier today"):
        handle.result(timeout=60)
    done = [what for what, _ in calls("order-2")]
    assert done == ["reserve", "charge", "ship", "refund", "release", "release"]  # refund not run again


def test_a_breaker_shared_by_two_workers(client, start_worker, effects_dir):
    start_worker(concurrency=1)
    start_worker(concurrency=1)
    key = "breaker"
    failing = [client.enqueue("saga.pay", args=[key, f"f{i}"]) for i in range(6)]
    for handle in failing:
        with pytest.raises(Exception):
            handle.result(timeout=60)
    reached = [what for what, _ in calls(key)]
    assert len(reached) == 3  # after the third failure, from either worker, no call reached the API
    assert len({pid for _, pid in calls(key)}) >= 1
    (effects_dir / f"{key}.api-up").touch()
    time.sleep(3.5)  # the reset timeout
    probes = [client.enqueue("saga.pay", args=[key, f"p{i}"]) for i in range(4)]
    results = []
    for handle in probes:
        try:
            results.append(handle.result(timeout=60))
        except Exception as exc:  # noqa: BLE001 - refused while the probe decides
            results.append(type(exc).__name__)
    after = [what for what, _ in calls(key)][3:]
    assert after[0].startswith("call:p")  # one probe went through first
    assert "paid p0" in results or any(r.startswith("paid") for r in results)
    closed = client.enqueue("saga.pay", args=[key, "after"])
    assert closed.result(timeout=60) == "paid after"  # the probe's success closed it for both workers
