"""durable on Celery's threads pool (`celery worker -P threads`): several
executions share one process, its lease keeper and its connection pool. The
benchmark runs durable this way too (2 processes x 4 threads, like DBOS's
threads); these tests check the guarantees hold there, against real workers."""

from __future__ import annotations

import pytest

from durable import Status
from tests.harness import Backend, Worker, wait_for
from tests.workflows import effects


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


@pytest.fixture
def start_threads_worker(backend, effects_dir, tmp_path):
    started: list[Worker] = []

    def start(threads: int = 4) -> Worker:
        worker = Worker(backend.env(effects_dir), tmp_path / f"threads{len(started)}.log", concurrency=threads)
        worker.args[worker.args.index("prefork")] = "threads"
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill_all()  # the test is over: no warm shutdown to wait for


def test_concurrent_workflows_in_threads_each_step_once(client, start_threads_worker):
    start_threads_worker()
    handles = [client.enqueue("ten_steps") for _ in range(24)]
    for handle in handles:
        assert handle.result(timeout=90)["sum"] == 385
    for handle in handles:
        ran = [kind for kind, _, _ in effects(handle.workflow_id)]
        assert ran == [f"step{i}" for i in range(1, 11)], ran
        assert [s.step_id for s in client.list_steps(handle.workflow_id)] == list(range(10))
        assert handle.status().recovery_attempts == 0


def test_step_timeout_on_a_worker_thread(client, start_threads_worker):
    start_threads_worker()
    # not the main thread: the step runs in a helper thread abandoned at the deadline
    assert client.enqueue("times_out_step").result(timeout=60) == "StepTimeoutError | StepTimeoutError"


def test_whole_threads_worker_killed_mid_step_is_finished_by_another(client, start_threads_worker):
    worker = start_threads_worker()
    handle = client.enqueue("ten_steps", kwargs={"pause_seconds": 30.0, "slow_step": 5})
    others = [client.enqueue("ten_steps") for _ in range(3)]
    wait_for(lambda: any(k == "step5" for k, _, _ in effects(handle.workflow_id)), 60, "step 5 to start")
    worker.kill_all()  # SIGKILL the process and every thread in it
    start_threads_worker()
    result = handle.result(timeout=90)
    assert result["sum"] == 385
    ran = [k for k, _, _ in effects(handle.workflow_id)]
    assert [ran.count(f"step{i}") for i in range(1, 11)] == [1, 1, 1, 1, 2, 1, 1, 1, 1, 1], ran
    status = handle.status()
    assert status.status is Status.SUCCESS and status.recovery_attempts == 1
    for other in others:
        assert other.result(timeout=90)["sum"] == 385
