"""examples/fastapi_app (issue 13): async endpoints that write an order and
enqueue its workflow in one transaction, answer other requests while one
awaits a result, stream the status as server-sent events, and refuse
invalid input with a 422. Starlette's test client (the app's lifespan on
one event loop in a thread) against real Postgres, Redis and a worker."""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from durable import DurableClient
from examples.fastapi_app.app import create_app
from tests.harness import Backend


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


@pytest.fixture
def api(client: DurableClient, start_worker, effects_dir) -> Iterator[TestClient]:
    start_worker(DURABLE_IMPORTS="examples.fastapi_app.workflows")
    with TestClient(create_app(client)) as test_client:
        yield test_client


def orders(backend: Backend) -> list[str]:
    engine = create_engine(backend.database_url)
    with engine.connect() as conn:
        found = list(conn.execute(text("SELECT id FROM api_orders ORDER BY id")).scalars())
    engine.dispose()
    return found


def test_an_order_is_written_and_its_workflow_run(api: TestClient, backend: Backend, client: DurableClient) -> None:
    response = api.post("/orders", json={"order_id": "o-1", "total": 10.5})
    assert (response.status_code, response.json()) == (202, {"workflow_id": "order-o-1"})
    result = api.get("/orders/o-1/result", params={"timeout": 30})
    assert result.status_code == 200 and result.json()["result"]["order_id"] == "o-1"
    assert api.get("/orders/o-1").json()["status"] == "SUCCESS"
    assert orders(backend) == ["o-1"]
    again = api.post("/orders", json={"order_id": "o-1", "total": 10.5})
    assert again.status_code == 409
    assert [w.workflow_id for w in client.list_workflows()] == ["order-o-1"]
    assert api.get("/orders/nope").status_code == 404


def test_invalid_input_is_a_422_and_nothing_is_written(api: TestClient, backend: Backend, client: DurableClient) -> None:
    for body in ({"order_id": "o-2", "total": "ten"}, {"order_id": "o-2"}, {"order_id": "o 2", "total": 1},
                 {"order_id": "o-2", "total": -1}, {"order_id": "o-2", "total": 1, "delay_seconds": 99}):
        assert api.post("/orders", json=body).status_code == 422, body
    assert orders(backend) == []
    assert client.list_workflows() == []


def test_waiting_for_a_result_leaves_the_loop_serving(api: TestClient) -> None:
    assert api.post("/orders", json={"order_id": "o-3", "total": 1.0, "delay_seconds": 3.0}).status_code == 202
    waited: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: waited.update(
        response=api.get("/orders/o-3/result", params={"timeout": 30}).json()
    ))
    waiter.start()
    answered_meanwhile = 0
    while waiter.is_alive():
        if api.get("/health").json() == {"ok": True} and waiter.is_alive():
            answered_meanwhile += 1
    waiter.join()
    assert waited["response"]["result"]["order_id"] == "o-3"
    # the 3 s step: a loop blocked by the wait would answer no other request
    assert answered_meanwhile > 3, answered_meanwhile


def test_status_is_streamed_as_server_sent_events(api: TestClient) -> None:
    assert api.post("/orders", json={"order_id": "o-4", "total": 1.0, "delay_seconds": 1.0}).status_code == 202
    statuses = []
    with api.stream("GET", "/orders/o-4/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                statuses.append(json.loads(line[len("data: "):]))
    assert statuses[-1]["status"] == "SUCCESS" and statuses[-1]["output"]["order_id"] == "o-4"
    assert {s["status"] for s in statuses[:-1]} <= {"ENQUEUED", "PENDING"}
    assert api.get("/orders/nope/events").status_code == 404
