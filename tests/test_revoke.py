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
from durable.errors import AwaitedWorkflowCancelledError
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


def test_revoking_a_running_chain_task_stops_the_chain_where_it_is(backend, client, start_worker):
    """Celery's semantics: a chain whose running task is revoked (with
    terminate) runs nothing after it. The worker ran the link that follows
    in the same delivery (no message of its own), so the revoke names the
    message of the link before; the running link is cancelled, not
    recovered, and the last one never runs."""
    from celery import signature

    from tests.dispatch_workflows import runs

    start_worker(concurrency=1, DURABLE_TEST_POOL="default")
    dur = Durable(settings=backend.settings())
    key = "chain-revoked"
    handle = dur.chain(
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.stage", args=("b", key, 30.0)),
        signature("dispatch.stage", args=("c", key)),
    ).start(workflow_id=key)
    wait_for(lambda: [what for what, _, _ in runs(key)] == ["a", "b"] or None, 30, "b to start")
    [carrier] = wait_for(lambda: _task_ids(dur.celery.control.inspect(timeout=2).active(), f"{key}-0") or None,
                         30, "a's message, still running b, in inspect().active()")
    dur.celery.control.revoke(carrier, terminate=True)

    wait_for(lambda: client.get(f"{key}-0-1").status is Status.CANCELLED or None, 30, "b cancelled")
    with pytest.raises(AwaitedWorkflowCancelledError):  # the chain ends with its cancelled link's error
        handle.result(timeout=30)
    time.sleep(4)  # past the lease and the sweeper's redelivery time: b is not run again, c never
    assert [what for what, _, _ in runs(key)] == ["a", "b"]
    assert client.get(f"{key}-0").status is Status.SUCCESS  # a had ended before the revoke
