"""The workflow the Django example enqueues by name. Workers import this
module (DURABLE_IMPORTS=examples.django_app.workflows); Django does not."""

from __future__ import annotations

import durable
from workers.app import dur


@dur.step(retries=3, interval=0.5)
def charge(order_id: str, total: float) -> str:
    return f"tx-{durable.context().idempotency_key}"


@dur.workflow(name="shop.process_order")
def process_order(order_id: str, total: float) -> dict:
    return {"order_id": order_id, "tx": charge(order_id, total)}
