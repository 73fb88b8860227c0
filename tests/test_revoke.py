"""Celery's revoke of a durable message (Flower's Revoke button, `celery
control revoke`) cancels its workflow. A revoked message alone is only
discarded: the workflow's row would still be pending, the sweeper would
publish it again, and it would run anyway. Real Postgres, Redis and a
prefork worker."""

from __future__ import annotations

import json
import time

import pytest

from durable import Durable, Status
from tests.harness import wait_for
from tests.workflows import effects


@pytest.fixture
def backend(pg_backend):
    return pg_backend


def _task_ids(found: dict | None, workflow_id: str) -> list[str]:
    """IDs of the tasks an `inspect()` reply lists for this workflow."""
    return [
        task["id"] for tasks in (found or {}).values() for task in tasks
        if workflow_id in (task.get("args") or [])
    ]


def _queued_task_ids(broker_url: str, workflow_id: str) -> list[str]:
    """IDs of this workflow's messages still in Redis (the worker takes one
    message at a time): in the `celery` queue's lists, one per priority."""
    import redis as redis_client

    server = redis_client.Redis.from_url(broker_url)
    lists = [key for key in server.keys("celery*") if server.type(key) == b"list"]
    messages = [json.loads(m) for key in lists for m in server.lrange(key, 0, -1)]
    return [m["headers"]["id"] for m in messages if repr(workflow_id) in m["headers"].get("argsrepr", "")]


def test_a_revoked_message_cancels_its_workflow_running_or_waiting(backend, client, start_worker):
    start_worker(concurrency=1)  # the second workflow's message waits in the queue behind the first
    control = Durable(settings=backend.settings()).celery.control
    running = client.enqueue("slow_workflow", args=["running", 30.0])
    waiting = client.enqueue("slow_workflow", args=["waiting", 0.0])
    wait_for(lambda: effects(running.workflow_id) or None, 30, "the first workflow's step to start")
    [running_task] = wait_for(lambda: _task_ids(control.inspect(timeout=2).active(), running.workflow_id) or None,
                              30, "the running task in inspect().active()")
    # one message or more: the sweeper publishes a workflow again while it waits this long
    waiting_tasks = wait_for(lambda: _queued_task_ids(backend.broker_url, waiting.workflow_id) or None,
                             30, "the waiting workflow's message in the queue")

    control.revoke(waiting_tasks)  # discarded when the worker receives it
    control.revoke(running_task, terminate=True)  # its pool child is killed now

    for handle in (running, waiting):
        wait_for(lambda: client.get(handle.workflow_id).status is Status.CANCELLED or None, 30,
                 f"{handle.workflow_id} cancelled")
    time.sleep(4)  # past the sweeper's redelivery time (3 s): nothing is published again
    assert [kind for kind, _, _ in effects(running.workflow_id)] == ["slow_echo"]  # not run again
    assert effects(waiting.workflow_id) == []  # never run
    for handle in (running, waiting):
        status = client.get(handle.workflow_id)
        assert status.status is Status.CANCELLED and status.recovery_attempts == 0, status
