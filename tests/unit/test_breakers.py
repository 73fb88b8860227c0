"""Circuit breakers: a database row every worker shares. Failures open it,
open it refuses calls without making them, past its reset one probe decides."""

from __future__ import annotations

from typing import Any

import pytest

from durable import Status
from durable.errors import CircuitOpenError

from .conftest import Cluster


def _payments(cluster: Cluster, retries: int = 0) -> tuple[Any, list[str], dict[str, bool]]:
    dur = cluster.dur
    dur.circuit_breaker("payments-api", failure_threshold=3, window=60, reset_timeout=30)
    calls: list[str] = []
    api = {"up": False}

    @dur.step(name="call_payments", circuit="payments-api", retries=retries, interval=0.1)
    def call_payments(order_id: str) -> str:
        calls.append(order_id)
        if not api["up"]:
            raise ConnectionError("payments api down")
        return f"paid {order_id}"

    @dur.workflow(name="pay")
    def pay(order_id: str) -> str:
        return call_payments(order_id)

    return pay, calls, api


def test_failures_open_the_breaker_and_then_no_call_is_made(cluster: Cluster) -> None:
    pay, calls, api = _payments(cluster)
    handles = [pay.start(f"o{i}") for i in range(5)]
    cluster.drive()
    assert calls == ["o0", "o1", "o2"]  # the third failure opened it: o3 and o4 were not called
    for handle in handles[3:]:
        with pytest.raises(CircuitOpenError):
            handle.result(timeout=0)
    [breaker] = cluster.dur.list_breakers()
    assert breaker["state"] == "open"


def test_past_the_reset_exactly_one_probe_goes_through_and_closes_it(cluster: Cluster) -> None:
    pay, calls, api = _payments(cluster)
    for i in range(3):
        pay.start(f"fail{i}")
    cluster.drive()
    cluster.clock.advance(31)
    api["up"] = True
    first, second = pay.start("probe"), pay.start("waits")
    pending = list(cluster.dispatcher.pending)
    cluster.dispatcher.pending.clear()
    # both attempts reach the breaker before either reports: one is the probe
    store = cluster.dur.store
    breaker = cluster.dur.breakers["payments-api"]
    verdicts = [store.breaker_before(breaker, t, cluster.clock.now_ms())[0] for t in ("a", "b")]
    assert sorted(verdicts) == ["open", "probe"]
    store.breaker_after(breaker, "a" if verdicts[0] == "probe" else "b", True, cluster.clock.now_ms())
    assert cluster.dur.list_breakers()[0]["state"] == "closed"
    cluster.dispatcher.pending.extend(pending)
    cluster.drive()
    assert first.result(timeout=0) == "paid probe" and second.result(timeout=0) == "paid waits"


def test_a_failed_probe_opens_it_again(cluster: Cluster) -> None:
    pay, calls, api = _payments(cluster)
    for i in range(3):
        pay.start(f"fail{i}")
    cluster.drive()
    cluster.clock.advance(31)
    probe = pay.start("probe")
    cluster.drive()
    assert calls[-1] == "probe"
    with pytest.raises(ConnectionError):
        probe.result(timeout=0)
    assert cluster.dur.list_breakers()[0]["state"] == "open"


def test_a_step_with_retries_waits_for_the_reset_as_a_timer(cluster: Cluster) -> None:
    pay, calls, api = _payments(cluster, retries=2)
    cluster.dur.open_breaker("payments-api")
    handle = pay.start("patient")
    cluster.drive()
    assert calls == [] and handle.status().status is Status.PENDING  # suspended: no worker slot held
    row = cluster.dur.store.workflow_row(handle.workflow_id)
    assert row["redispatch_at_ms"] >= cluster.clock.now_ms() + 29_000  # wakes at the reset
    api["up"] = True
    cluster.clock.advance(30.5)
    cluster.sweep()
    cluster.drive()
    assert handle.result(timeout=0) == "paid patient" and calls == ["patient"]


def test_operators_open_and_close_breakers_and_bad_declarations(cluster: Cluster) -> None:
    pay, calls, api = _payments(cluster)
    dur = cluster.dur
    dur.open_breaker("payments-api", seconds=600)
    assert dur.list_breakers()[0]["state"] == "open"
    dur.close_breaker("payments-api")
    api["up"] = True
    handle = pay.start("after-close")
    cluster.drive()
    assert handle.result(timeout=0) == "paid after-close"
    with pytest.raises(ValueError, match="no circuit breaker"):
        dur.step(circuit="undeclared")(lambda: None)
    with pytest.raises(ValueError):
        dur.circuit_breaker("bad", failure_threshold=0)
    with pytest.raises(ValueError):
        dur.circuit_breaker("bad", reset_timeout=float("inf"))
    with pytest.raises(ValueError, match="no circuit breaker"):
        dur.open_breaker("nope")
