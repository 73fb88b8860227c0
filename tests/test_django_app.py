"""examples/django_app and durable.contrib.django (issue 13): a view writes
an order and enqueues its workflow in one `transaction.atomic()` block, on
Django's own connection to the database it shares with durable. Real
Postgres, Redis and a worker; Django's test client calls the views."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy.engine import make_url

from durable import Status
from durable.errors import WorkflowNotFoundError
from tests.harness import Backend, Worker, wait_for

import django  # a test dependency (pyproject's `test` extra): missing, the import fails, no skip


@pytest.fixture(scope="module")
def shop(create_pg_database, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The example project on a fresh database, migrated (its orders table
    and durable's), and one worker that imports its workflows."""
    url = create_pg_database("django")
    parts = make_url(url)
    broker = redis_url.rsplit("/", 1)[0] + "/14"  # a database of its own: no other test's messages
    env = {
        "DJANGO_SETTINGS_MODULE": "examples.django_app.shop.settings",
        "SHOP_DB_NAME": parts.database or "", "SHOP_DB_USER": parts.username or "",
        "SHOP_DB_HOST": parts.host or "", "SHOP_DB_PORT": str(parts.port),
        "DURABLE_BROKER_URL": broker,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("durable", "migrate")
    tmp = tmp_path_factory.mktemp("django")
    backend = Backend("postgres", url, broker, tmp / "home")
    (tmp / "effects").mkdir()
    worker = Worker(backend.env(tmp / "effects", DURABLE_IMPORTS="examples.django_app.workflows"),
                    tmp / "worker.log").start()
    try:
        from durable.contrib.django import get_client
        from durable.store.workflow_schemas import workflow_schema

        client = get_client()
        # the worker records its workflows' parameters once its consumer is up
        wait_for(lambda: workflow_schema(client.store.db, "shop.process_order")[1], 30,
                 "the worker's record of shop.process_order")
        yield {"client": client, "backend": backend}
    finally:
        worker.kill_all()
        from django.db import connections

        connections.close_all()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from django.test import Client

    response = Client().post("/orders", data=json.dumps(body), content_type="application/json")
    return response.status_code, json.loads(response.content)


def orders() -> list[str]:
    from examples.django_app.orders.models import Order

    return sorted(Order.objects.values_list("id", flat=True))


def test_an_order_and_its_workflow_commit_together(shop: dict[str, Any]) -> None:
    client = shop["client"]
    assert post({"order_id": "o-1", "total": 10.5}) == (202, {"workflow_id": "order-o-1"})
    assert client.handle("order-o-1").result(timeout=60)["order_id"] == "o-1"
    assert "o-1" in orders()
    from django.test import Client

    status = json.loads(Client().get("/orders/o-1").content)
    assert status["status"] == Status.SUCCESS.value


def test_a_request_that_fails_after_the_enqueue_leaves_neither(shop: dict[str, Any]) -> None:
    client = shop["client"]
    status, body = post({"order_id": "o-2", "total": 3.0, "fail_after_enqueue": True})
    assert status == 500
    assert "o-2" not in orders()
    with pytest.raises(WorkflowNotFoundError):
        client.get("order-o-2")


def test_bad_input_is_a_422_and_writes_nothing(shop: dict[str, Any]) -> None:
    client = shop["client"]
    status, body = post({"order_id": "o-3", "total": "ten"})
    assert status == 422 and body["parameter"] == "total", body
    assert "o-3" not in orders()
    with pytest.raises(WorkflowNotFoundError):
        client.get("order-o-3")
    # its own order: xdist may run this test in another process than the first test
    assert post({"order_id": "o-5", "total": 1.0})[0] == 202
    assert post({"order_id": "o-5", "total": 10.5})[0] == 409  # the order exists: nothing new
    assert client.handle("order-o-5").result(timeout=60)["order_id"] == "o-5"


def test_enqueue_outside_an_atomic_block_is_refused(shop: dict[str, Any]) -> None:
    from durable.contrib.django import enqueue

    with pytest.raises(ValueError, match="atomic"):
        enqueue("shop.process_order", args=["o-4", 1.0], transaction=True)
    handle = enqueue("shop.process_order", args=["o-4", 1.0])  # without: committed at once
    assert handle.result(timeout=60)["order_id"] == "o-4"


def test_the_durable_management_command(shop: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from django.core.management import call_command

    assert post({"order_id": "o-6", "total": 2.0})[0] == 202  # its own, whatever ran before here
    call_command("durable", "workflows", "list")
    assert "order-o-6" in capsys.readouterr().out
