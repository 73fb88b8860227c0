"""Sagas: compensations run in reverse order as checkpointed steps, once
each, also across a crash in the middle of compensating."""

from __future__ import annotations

from typing import Any

import pytest

import durable
from durable import Status
from durable.errors import CompensationFailedError

from .conftest import Cluster, SimulatedCrash


def _checkout(cluster: Cluster, crash_in_release: list[bool] | None = None, refund_fails: bool = False) -> Any:
    dur = cluster.dur
    calls: list[str] = []

    @dur.step(name="release_stock")
    def release_stock(reservation: str, order_id: str) -> None:
        calls.append(f"release {reservation}")
        if crash_in_release:
            crash_in_release.pop()
            raise SimulatedCrash()

    @dur.step(name="refund")
    def refund(tx: str, order_id: str, total: float) -> None:
        calls.append(f"refund {tx}")
        if refund_fails:
            raise ConnectionError("refunds are down")

    @dur.step(name="reserve_stock", compensate=release_stock)
    def reserve_stock(order_id: str) -> str:
        calls.append("reserve")
        return f"res-{order_id}"

    @dur.step(name="charge", compensate=refund)
    def charge(order_id: str, total: float) -> str:
        calls.append("charge")
        return f"tx-{order_id}"

    @dur.step(name="ship")
    def ship(order_id: str) -> None:
        calls.append("ship")
        raise ValueError("no courier")

    @dur.workflow(name="checkout")
    def checkout(order_id: str, total: float) -> str:
        with durable.saga():
            reserve_stock(order_id)
            tx = charge(order_id, total)
            durable.compensate(note, "undo ship attempt")
            ship(order_id)
        return tx

    def note(text: str) -> None:
        calls.append(text)

    return checkout, calls


def test_a_failed_step_undoes_the_completed_ones_in_reverse_then_raises(cluster: Cluster) -> None:
    checkout, calls = _checkout(cluster)
    handle = checkout.start("o-1", 10.0)
    cluster.drive()
    with pytest.raises(ValueError, match="no courier"):
        handle.result(timeout=0)
    assert calls == ["reserve", "charge", "ship", "undo ship attempt", "refund tx-o-1", "release res-o-1"]
    names = [s.name for s in cluster.steps(handle.workflow_id)]
    assert names[-3:] == ["compensate:_checkout.<locals>.note", "refund", "release_stock"]


def test_a_crash_while_compensating_resumes_without_running_a_compensation_twice(cluster: Cluster) -> None:
    checkout, calls = _checkout(cluster, crash_in_release=[True])
    handle = checkout.start("o-2", 5.0)
    cluster.drive()  # the worker dies in release_stock
    cluster.recover()
    with pytest.raises(ValueError, match="no courier"):
        handle.result(timeout=0)
    assert calls.count("refund tx-o-2") == 1 and calls.count("undo ship attempt") == 1
    assert calls.count("release res-o-2") == 2  # the one in flight ran again; it completed once
    assert calls.count("ship") == 1 and calls.count("charge") == 1


def test_a_compensation_that_fails_keeps_both_errors(cluster: Cluster) -> None:
    checkout, calls = _checkout(cluster, refund_fails=True)
    handle = checkout.start("o-3", 1.0)
    cluster.drive()
    with pytest.raises(CompensationFailedError) as raised:
        handle.result(timeout=0)
    assert "no courier" in raised.value.original and "refunds are down" in raised.value.compensation
    assert handle.status().status is Status.ERROR
    assert "release res-o-3" not in calls  # compensating stopped at the failure


def test_outside_a_saga_and_bad_input() -> None:
    with pytest.raises(RuntimeError, match="saga"):
        durable.compensate(print, "x")
    with pytest.raises(TypeError):
        with durable.saga():
            durable.compensate("not callable")  # type: ignore[arg-type]
    undone: list[int] = []
    with pytest.raises(KeyError):
        with durable.saga():  # plain Python: compensations are plain calls
            durable.compensate(undone.append, 1)
            durable.compensate(undone.append, 2)
            raise KeyError("x")
    assert undone == [2, 1]
