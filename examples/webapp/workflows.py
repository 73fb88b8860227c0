"""The workflow the example web app enqueues by name. Workers import this
module (DURABLE_IMPORTS=examples.webapp.workflows); the web app does not."""

from __future__ import annotations

import os
import time

import durable
from workers.app import dur


@dur.step(retries=3, interval=0.5)
def reserve_stock(order_id: str) -> str:
    time.sleep(0.2)
    return f"reservation-{order_id}"


@dur.step(retries=5, interval=1.0, backoff=2.0, max_interval=30.0, jitter=True)
def charge(order_id: str, total: float) -> str:
    # A real payment API takes this as its idempotency key: it is the same
    # on every retry and every recovery of this step.
    key = durable.context().idempotency_key
    time.sleep(0.2)
    return f"tx-{key}"


@dur.step()
def send_receipt(order_id: str, tx: str) -> str:
    return f"receipt for {order_id} ({tx}) sent by pid {os.getpid()}"


@dur.workflow(max_recovery_attempts=5)
def process_order(order_id: str, total: float) -> dict:
    reservation = reserve_stock(order_id)
    tx = charge(order_id, total)
    durable.sleep(1.0)
    return {"reservation": reservation, "tx": tx, "receipt": send_receipt(order_id, tx)}
