"""Steps as Celery tasks on their own worker pools, against real Postgres,
Redis and worker processes: routing, a killed step, a step that crashes its
small pool and finishes on the big one, a step that keeps dying, existing
Celery tasks through task_step and dur.chain surviving a flushed broker and
a killed worker."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from celery import signature

from durable import Durable, Status
from tests.dispatch_workflows import runs
from tests.harness import Backend, Worker, wait_for


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


@pytest.fixture
def pool(backend: Backend, effects_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts a worker consuming `queues`, its pool named in DURABLE_TEST_POOL."""
    started: list[Worker] = []

    def start(name: str, queues: str, concurrency: int = 1) -> Worker:
        worker = Worker(
            backend.env(effects_dir, DURABLE_TEST_POOL=name), tmp_path / f"{name}-{len(started)}.log",
            concurrency=concurrency, queues=queues, name=f"{name}{len(started)}",
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill_all()


def _dur(backend: Backend) -> Durable:
    return Durable(settings=backend.settings(redelivery_seconds=3.0))


def test_a_step_on_queue_heavy_runs_only_on_the_heavy_pool(client, pool):
    default = pool("default", "celery", concurrency=2)
    heavy = pool("heavy", "heavy")
    handle = client.enqueue("heavy_and_light")
    result = handle.result(timeout=60)
    ran = runs(handle.workflow_id)
    assert {(what, where) for what, _, where in ran} == {
        ("light1", "default"), ("heavy", "heavy"), ("light2", "default")
    }
    assert set(result["light"]) <= set(default.children())
    assert result["heavy"] in heavy.children()
    step = client.get(f"{handle.workflow_id}-1")
    assert step.name == "durable.step:heavy_work" and step.queue == "heavy"


def test_sigkill_of_the_child_running_a_dispatched_step(client, pool):
    pool("default", "celery")
    heavy = pool("heavy", "heavy")
    handle = client.enqueue("heavy_and_light", kwargs={"pause_seconds": 30.0})
    victim = wait_for(
        lambda: next((pid for what, pid, _ in runs(handle.workflow_id) if what == "heavy"), None),
        60, "the heavy step to start",
    )
    assert victim in heavy.children()
    os.kill(victim, signal.SIGKILL)
    result = handle.result(timeout=60)
    ran = [what for what, _, _ in runs(handle.workflow_id)]
    assert sorted(ran) == ["heavy", "heavy", "light1", "light2"]  # steps before it ran once
    assert result["heavy"] != victim
    [step] = client.list_steps(f"{handle.workflow_id}-1")
    assert step.crashes == 1 and "SIGKILL" in (step.last_crash or ""), step
    assert client.get(handle.workflow_id).recovery_attempts == 0  # the step's crash, not the workflow's


def test_a_step_that_dies_on_the_small_pool_completes_on_the_big_one(client, pool):
    pool("default", "celery")
    pool("small", "small")
    pool("big", "big")
    handle = client.enqueue("memory_hungry")
    assert handle.result(timeout=90) == "big"
    assert [where for _, _, where in runs(handle.workflow_id)] == ["small", "big"]
    step = client.get(f"{handle.workflow_id}-0")
    assert step.queue == "big" and step.recovery_attempts == 1
    [row] = client.list_steps(step.workflow_id)
    assert row.crashes == 1


def test_a_step_that_always_dies_fails_inside_the_workflow_after_max_recovery_attempts(client, pool):
    pool("default", "celery")
    pool("heavy", "heavy")
    handle = client.enqueue("falls_back")
    assert handle.result(timeout=120) == "fallback: AwaitedWorkflowMaxRecoveryAttemptsExceededError"
    assert [what for what, _, _ in runs(handle.workflow_id)] == ["always_dies"] * 3
    step = client.get(f"{handle.workflow_id}-0")
    assert step.status is Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED
    assert client.get(handle.workflow_id).status is Status.SUCCESS


def test_task_step_fan_out_survives_a_flushed_broker(backend, client, pool):
    import redis as redis_client

    pool("default", "celery", concurrency=3)
    key = "fan-out"
    handle = client.enqueue("fan_out_stages", args=[key, ["a", "b", "c"], 3.0], workflow_id=key)
    wait_for(lambda: len(runs(key)) == 3, 60, "the three stages to start")
    redis_client.Redis.from_url(backend.broker_url).flushdb()  # every queued and unacked message gone
    assert handle.result(timeout=90) == ["in>a", "in>b", "in>c"]
    assert sorted(what for what, _, _ in runs(key)) == ["a", "b", "c"]  # none ran twice


def test_a_chain_of_unchanged_celery_tasks_survives_a_killed_worker_and_a_flushed_broker(
    backend, client, pool
):
    import redis as redis_client

    worker = pool("default", "celery")
    key = "chain-1"
    dur = _dur(backend)
    stages = [
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.stage", args=("b", key)),
        signature("dispatch.stage", args=("c", key, 30.0)),
        signature("dispatch.stage", args=("d", key)),
    ]
    handle = dur.chain(*stages).start(workflow_id=key)
    wait_for(lambda: any(what == "c" for what, _, _ in runs(key)), 60, "stage c to start")
    worker.kill_all()  # the whole host: main process and children
    redis_client.Redis.from_url(backend.broker_url).flushdb()
    pool("default", "celery")
    assert handle.result(timeout=90) == "img>a>b>c>d"
    assert [what for what, _, _ in runs(key)] == ["a", "b", "c", "c", "d"]  # completed tasks not re-run
    dur.store.db.dispose()


def test_a_chain_runs_the_links_that_follow_in_the_same_child_and_a_heavy_link_on_its_pool(
    backend, client, pool
):
    """A worker that consumes the next link's queue runs it in the delivery
    of the link before (no message); a link routed to `heavy` still runs
    only on the heavy pool."""
    default = pool("default", "celery", concurrency=2)
    heavy = pool("heavy", "heavy")
    key = "chain-local"
    stages = [
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.stage", args=("b", key)),
        signature("dispatch.stage", args=("c", key), queue="heavy"),
        signature("dispatch.stage", args=("d", key)),
        signature("dispatch.stage", args=("e", key)),
    ]
    handle = _dur(backend).chain(*stages).start(workflow_id=key)
    assert handle.result(timeout=60) == "img>a>b>c>d>e"
    ran = runs(key)
    assert [(what, where) for what, _, where in ran] == [
        ("a", "default"), ("b", "default"), ("c", "heavy"), ("d", "default"), ("e", "default"),
    ]
    pids = {what: pid for what, pid, _ in ran}
    assert pids["a"] == pids["b"] and pids["d"] == pids["e"]  # each ran in the delivery of the one before
    assert pids["a"] in default.children() and pids["c"] in heavy.children()
    assert client.get(f"{key}-0-2").queue == "heavy"


@pytest.mark.parametrize("local_links, messages", [("1", 1), ("0", 4)])
def test_a_chain_of_four_links_publishes_one_message_or_one_per_link_with_local_links_off(
    backend, client, effects_dir, tmp_path, local_links, messages
):
    """Counted at Redis: every publish is one LPUSH (no other client here;
    no re-publish by the sweeper of a slow machine either)."""
    import redis as redis_client

    env = backend.env(
        effects_dir, DURABLE_LOCAL_CHAIN_LINKS=local_links, DURABLE_TEST_POOL="default",
        DURABLE_REDELIVERY_SECONDS="120",
    )
    worker = Worker(env, tmp_path / "links.log", concurrency=2).start()
    server = redis_client.Redis.from_url(backend.broker_url)
    try:
        key = f"chain-count-{local_links}"
        stages = [signature("dispatch.stage", args=("img", "a", key))] + [
            signature("dispatch.stage", args=(label, key)) for label in "bcd"
        ]
        dur = _dur(backend)
        dur.chain(stages[0]).start(workflow_id=f"{key}-warm").result(timeout=60)  # connections made
        before = server.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
        assert dur.chain(*stages).start(workflow_id=key).result(timeout=60) == "img>a>b>c>d"
        after = server.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
        assert after - before == messages
    finally:
        worker.kill_all()


def test_a_link_whose_queue_was_cancelled_at_runtime_waits_for_a_consumer(backend, client, pool):
    """`cancel_consumer` (to drain a queue off a worker) holds for chain
    links too: after it, the worker no longer runs that queue's links in
    the delivery before; they are published and wait for a consumer."""
    worker = pool("default", "celery,heavy")
    dur = _dur(backend)
    control = dur.celery.control
    destination = [f"{worker.name}@{socket.gethostname()}"]
    assert control.cancel_consumer("heavy", destination=destination, reply=True, timeout=10)
    time.sleep(1)  # the worker's pool children learn it at its next pool watch tick (0.5 s)
    key = "chain-cancelled"
    stages = [
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.stage", args=("b", key), queue="heavy"),
        signature("dispatch.stage", args=("c", key)),
    ]
    handle = dur.chain(*stages).start(workflow_id=key)
    wait_for(lambda: client.get(f"{key}-0").status is Status.SUCCESS or None, 30, "link a to end")
    time.sleep(3)  # a worker that still ran b here would have by now
    assert [what for what, _, _ in runs(key)] == ["a"]
    assert client.get(f"{key}-0-1").status is Status.ENQUEUED
    assert control.add_consumer("heavy", destination=destination, reply=True, timeout=10)
    assert handle.result(timeout=60) == "img>a>b>c"
    assert [what for what, _, _ in runs(key)] == ["a", "b", "c"]


def test_a_chain_task_that_calls_self_retry_runs_again_after_its_countdown(backend, client, pool):
    """`self.retry(countdown=...)` in a plain Celery task of a durable chain:
    the task runs again where it ran, and the chain goes on (Celery's own
    retry message is not sent: the retry is the step's next attempt)."""
    pool("default", "celery")
    key = "chain-retry"
    stages = [
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.retrying_stage", args=("b", key)),
        signature("dispatch.stage", args=("c", key)),
    ]
    handle = _dur(backend).chain(*stages).start(workflow_id=key)
    assert handle.result(timeout=60) == "img>a>b>c"
    assert [what for what, _, _ in runs(key)] == ["a", "b:0", "b:1", "c"]
    [step] = client.list_steps(f"{key}-0-1")
    assert step.status.value == "SUCCESS" and step.attempts == 2


def test_a_failed_chain_task_calls_its_error_callbacks_on_a_real_worker(backend, client, pool):
    """Celery's link_error in both conventions, on a worker: the one that
    takes the failed task's ID runs as a task, the one that takes
    (request, exc, traceback) inside the canvas workflow; the chain ends
    with the task's error and the task after it never runs."""
    pool("default", "celery")
    key = "chain-errback"
    chain = _dur(backend).chain(
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.failing_stage", args=("b", key)),
        signature("dispatch.stage", args=("c", key)),
    ).on_error(signature("dispatch.note_failure", kwargs={"key": key}))
    chain.on_error(signature("dispatch.note_failure_request", kwargs={"key": key}))
    handle = chain.start(workflow_id=key)
    with pytest.raises(ValueError, match="b failed on img>a"):
        handle.result(timeout=60)
    failed = f"{key}-0-1"
    assert [what for what, _, _ in runs(key)] == [
        "a", "b", f"errback:{failed}", f"errback-request:{failed}:ValueError",
    ]


def test_sigkill_of_the_child_running_a_chain_link_run_here(backend, client, pool):
    """The link that followed in the same delivery has no message of its
    own: its row is expired at the child's death and published again."""
    pool("default", "celery")
    key = "chain-kill"
    stages = [
        signature("dispatch.stage", args=("img", "a", key)),
        signature("dispatch.stage", args=("b", key, 30.0)),
        signature("dispatch.stage", args=("c", key)),
    ]
    handle = _dur(backend).chain(*stages).start(workflow_id=key)
    victim = wait_for(lambda: next((pid for what, pid, _ in runs(key) if what == "b"), None), 60, "b to start")
    os.kill(victim, signal.SIGKILL)
    assert handle.result(timeout=30) == "img>a>b>c"  # well under the 30 s the first b would have taken
    assert [what for what, _, _ in runs(key)] == ["a", "b", "b", "c"]
    link = client.get(f"{key}-0-1")
    assert link.recovery_attempts == 1 and "SIGKILL" in (link.last_death or ""), link


def test_a_chain_link_run_here_that_holds_the_gil_keeps_its_lease(backend, client, effects_dir, tmp_path):
    """The worker's main process renews the lease of a link that follows in
    a child's delivery, as it does for the link whose message it handed out."""
    lease_s = 1.0
    env = backend.env(effects_dir, DURABLE_LEASE_SECONDS=str(lease_s), DURABLE_TEST_POOL="default")
    worker = Worker(env, tmp_path / "gil.log", concurrency=2).start()
    try:
        key = "chain-gil"
        stages = [
            signature("dispatch.stage", args=("img", "a", key)),
            signature("dispatch.gil_stage", args=("b", key, 4 * lease_s)),
            signature("dispatch.stage", args=("c", key)),
        ]
        handle = _dur(backend).chain(*stages).start(workflow_id=key)
        assert handle.result(timeout=60) == "img>a>b>c"
        ran = runs(key)
        assert [what for what, _, _ in ran] == ["a", "b", "c"], worker.log_tail()
        pids = {what: pid for what, pid, _ in ran}
        assert pids["a"] == pids["b"]  # b ran in a's delivery (c, after 4 s, is published: LOCAL_LINKS_SECONDS)
        assert client.get(f"{key}-0-1").recovery_attempts == 0
    finally:
        worker.kill_all()


def test_bad_dispatched_input_is_refused_before_anything_is_written(backend, client):
    dur = _dur(backend)
    with pytest.raises(TypeError):
        dur.chain(signature("dispatch.stage", args=("x", "y", "z")), 42)
    with pytest.raises(Exception, match="serializ"):
        dur.chain(signature("dispatch.stage", args=(object(), "y", "z"))).start()
    assert client.list_workflows() == []
    dur.store.db.dispose()
