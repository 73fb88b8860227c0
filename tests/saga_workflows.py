"""A checkout saga and a payments circuit breaker, for
tests/test_sagas_and_breakers.py (and the payment example in
docs/sagas-and-breakers.md). Every call appends `<what> <pid>` to a file
named by the key it is given."""

from __future__ import annotations

import os
import time

import durable
from durable.errors import CircuitOpenError, MaxStepRetriesExceededError
from tests.workflows import effects_dir
from workers.app import dur


def note(key: str, what: str) -> None:
    effects_dir().mkdir(parents=True, exist_ok=True)
    with open(effects_dir() / f"{key}.saga", "a") as f:
        f.write(f"{what} {os.getpid()}\n")


def calls(key: str) -> list[tuple[str, int]]:
    path = effects_dir() / f"{key}.saga"
    if not path.exists():
        return []
    return [(what, int(pid)) for what, pid in (line.split() for line in path.read_text().splitlines())]


@dur.step(name="saga.release_stock")
def release_stock(reservation: str, order_id: str, pause_first: float) -> None:
    first = not any(w == "release" for w, _ in calls(order_id))
    note(order_id, "release")
    if first and pause_first:
        time.sleep(pause_first)  # long enough for the test to SIGKILL this process


@dur.step(name="saga.refund")
def refund(tx: str, order_id: str, total: float) -> None:
    note(order_id, "refund")


@dur.step(name="saga.reserve_stock", compensate=release_stock)
def reserve_stock(order_id: str, pause_first: float) -> str:
    note(order_id, "reserve")
    return f"res-{order_id}"


@dur.step(name="saga.charge", compensate=refund)
def charge(order_id: str, total: float) -> str:
    note(order_id, "charge")
    return f"tx-{order_id}"


@dur.step(name="saga.ship")
def ship(order_id: str) -> None:
    note(order_id, "ship")
    raise RuntimeError("no courier today")


@dur.workflow(name="saga.checkout")
def checkout(order_id: str, total: float, pause_in_release: float = 0.0) -> str:
    with durable.saga():
        reserve_stock(order_id, pause_in_release)
        tx = charge(order_id, total)
        ship(order_id)
    return tx


# --- a breaker shared by every worker ---------------------------------------------

dur.circuit_breaker("test-payments-api", failure_threshold=3, window=60, reset_timeout=3)


@dur.step(name="saga.call_payments", circuit="test-payments-api")
def call_payments(key: str, order_id: str) -> str:
    note(key, f"call:{order_id}")
    if not (effects_dir() / f"{key}.api-up").exists():
        raise ConnectionError("payments api down")
    return f"paid {order_id}"


@dur.workflow(name="saga.pay")
def pay(key: str, order_id: str) -> str:
    return call_payments(key, order_id)


# --- the payment example of docs/sagas-and-breakers.md ----------------------------

dur.circuit_breaker("example-primary-psp", failure_threshold=2, window=60, reset_timeout=30)


@dur.step(name="example.release_stock")
def example_release_stock(reservation: str, order_id: str) -> None:
    note(order_id, "release")


@dur.step(name="example.reserve_stock", compensate=example_release_stock)
def example_reserve_stock(order_id: str) -> str:
    note(order_id, "reserve")
    return f"res-{order_id}"


@dur.step(name="example.refund")
def example_refund(receipt: str, order_id: str, total: float) -> None:
    note(order_id, f"refund:{receipt}")


@dur.step(name="example.charge_primary", circuit="example-primary-psp", retries=1, interval=0.1,
          dont_retry_on=(CircuitOpenError,),  # breaker open: go to the fallback now, not after the reset
          compensate=example_refund)
def example_charge_primary(order_id: str, total: float) -> str:
    note(order_id, "charge_primary")
    raise ConnectionError("primary provider down")


@dur.step(name="example.charge_fallback", compensate=example_refund)
def example_charge_fallback(order_id: str, total: float) -> str:
    note(order_id, "charge_fallback")
    return f"fallback-{order_id}"


@dur.step(name="example.ship")
def example_ship(order_id: str, deliverable: bool) -> str:
    note(order_id, "ship")
    if not deliverable:
        raise RuntimeError("address not deliverable")
    return f"parcel-{order_id}"


@dur.workflow(name="example.checkout")
def example_checkout(order_id: str, total: float, deliverable: bool) -> dict:
    """Reserve, charge with retries behind a breaker and fall back to a
    second provider, ship; on failure, compensate what was done."""
    with durable.saga():
        reservation = example_reserve_stock(order_id)
        try:
            receipt = example_charge_primary(order_id, total)
        except (MaxStepRetriesExceededError, CircuitOpenError):
            receipt = example_charge_fallback(order_id, total)
        parcel = example_ship(order_id, deliverable)
    return {"reservation": reservation, "receipt": receipt, "parcel": parcel}
