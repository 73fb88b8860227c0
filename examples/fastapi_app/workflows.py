"""The workflow the FastAPI example enqueues by name. Workers import this
module (DURABLE_IMPORTS=examples.fastapi_app.workflows); the web app does
not."""

from __future__ import annotations

import time

import durable
from workers.app import dur


@dur.step(retries=3, interval=0.5)
def charge(order_id: str, total: float, delay_seconds: float) -> str:
    time.sleep(delay_seconds)  # a slow payment API
    return f"tx-{durable.context().idempotency_key}"


@dur.workflow(name="api.process_order")
def process_order(order_id: str, total: float, delay_seconds: float = 0.0) -> dict:
    return {"order_id": order_id, "tx": charge(order_id, total, delay_seconds)}
