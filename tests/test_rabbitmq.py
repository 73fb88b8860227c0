"""The core contract on RabbitMQ (Postgres as the store): a representative
subset of tests/test_contract.py, run again here with the RabbitMQ backend,
and a purged queue that loses no workflow (the broker is a doorbell there
too). Each pytest process starts its own RabbitMQ for these (tests/servers.py)."""

from __future__ import annotations

import pytest
from kombu import Connection

from durable import Status
from tests import test_contract as contract
from tests.harness import wait_for
from tests.workflows import effects

pytestmark = pytest.mark.parametrize("backend", ["rabbitmq"], indirect=True)

# Collected here once more, on RabbitMQ: a plain run, a killed pool child
# (its message requeued by RabbitMQ, reject_on_worker_lost), two deliveries
# at once, a parent suspended on its child.
test_ten_step_workflow_started_from_another_process = contract.test_ten_step_workflow_started_from_another_process
test_sigkill_of_prefork_child_during_step_5 = contract.test_sigkill_of_prefork_child_during_step_5
test_duplicate_delivery_at_once_runs_each_step_once = contract.test_duplicate_delivery_at_once_runs_each_step_once
test_awaiting_a_child_with_a_timeout_inside_a_workflow = contract.test_awaiting_a_child_with_a_timeout_inside_a_workflow


def test_a_purged_queue_loses_no_workflow(backend, client, start_worker, effects_dir):
    """Messages published while no worker runs, then purged from RabbitMQ:
    the sweeper of the worker that starts later publishes them again."""
    handles = [client.enqueue("ten_steps") for _ in range(3)]
    # enqueue returns at its row's commit and publishes from a thread just
    # after; wait for those publishes so the purge below finds all three.
    assert client.start_dispatcher.flush()
    with Connection(backend.broker_url, connect_timeout=10) as conn:
        purged = conn.channel().queue_purge("celery")
    assert purged == 3
    start_worker()
    for handle in handles:
        assert handle.result(timeout=60)["sum"] == 385
        assert handle.status().status is Status.SUCCESS
        ran = [k for k, _, _ in effects(handle.workflow_id)]
        assert ran == [f"step{i}" for i in range(1, 11)], ran
    wait_for(lambda: all(h.status().status is Status.SUCCESS for h in handles), 10, "every workflow ended")
