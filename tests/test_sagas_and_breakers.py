"""Sagas and circuit breakers across real worker processes, Postgres and
Redis: compensations in reverse order, once each, also through a SIGKILL
in the middle of compensating; a breaker shared by two workers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from durable import Status
from durable.errors import CircuitOpenError
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
    reached = len(calls(key))
    # the third failure, from either worker, opened it: at most the other
    # worker's attempt already under way when it opened came after it
    assert 3 <= reached <= 4
    refused = [client.enqueue("saga.pay", args=[key, f"r{i}"]) for i in range(3)]
    for handle in refused:
        with pytest.raises(CircuitOpenError):
            handle.result(timeout=60)
    assert len(calls(key)) == reached  # while open, no call reached the API on either worker
    (effects_dir / f"{key}.api-up").touch()
    time.sleep(3.5)  # the reset timeout
    probe = client.enqueue("saga.pay", args=[key, "probe"])
    assert probe.result(timeout=60) == "paid probe"  # the one probe went through and closed it
    after = [client.enqueue("saga.pay", args=[key, f"a{i}"]) for i in range(4)]
    assert [h.result(timeout=60) for h in after] == [f"paid a{i}" for i in range(4)]  # closed for both


def test_the_payment_example_of_the_docs(client, start_worker):
    start_worker()
    shipped = client.enqueue("example.checkout", args=["pay-1", 20.0, True])
    assert shipped.result(timeout=60) == {
        "reservation": "res-pay-1", "receipt": "fallback-pay-1", "parcel": "parcel-pay-1"
    }
    assert [w for w, _ in calls("pay-1")] == [
        "reserve", "charge_primary", "charge_primary", "charge_fallback", "ship"
    ]  # the primary failed twice (its retry), which opened its breaker
    undone = client.enqueue("example.checkout", args=["pay-2", 5.0, False])
    with pytest.raises(RuntimeError, match="not deliverable"):
        undone.result(timeout=60)
    # the breaker is open: the primary is not called; the fallback's charge is refunded, then the stock released
    assert [w for w, _ in calls("pay-2")] == [
        "reserve", "charge_fallback", "ship", "refund:fallback-pay-2", "release"
    ]
