"""Dispatched steps: a step with `queue=` runs as its own workflow on that
queue (its own Celery task), the parent waits suspended, and crashes of the
step count against the step."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

import durable
from durable import Status
from durable.errors import MaxRecoveryAttemptsExceededError

from .conftest import Cluster, SimulatedCrash


def test_a_dispatched_step_runs_as_its_own_workflow_on_its_queue(cluster: Cluster) -> None:
    dur = cluster.dur
    ran: list[str] = []

    @dur.step(queue="gpu", name="embed")
    def embed(text: str) -> list[float]:
        ran.append(durable.context().workflow_id or "")
        return [float(len(text))]

    @dur.step(name="extract")
    def extract(doc: str) -> str:
        return doc.upper()

    @dur.workflow(name="ingest")
    def ingest(doc: str) -> list[float]:
        return embed(extract(doc))

    handle = ingest.start("abc")
    outcomes = cluster.drive()
    assert outcomes == ["executed", "executed", "executed"]  # parent suspends, step, parent ends
    assert handle.result(timeout=0) == [3.0]
    step_id = f"{handle.workflow_id}-1"
    assert ran == [step_id]  # the step ran once, in its own workflow
    assert (step_id, "gpu") in cluster.dispatcher.queues
    child = cluster.status(step_id)
    assert child.name == "durable.step:embed" and child.queue == "gpu"
    assert child.parent_workflow_id == handle.workflow_id and child.status is Status.SUCCESS
    names = [s.name for s in cluster.steps(handle.workflow_id)]
    assert names == ["extract", "start:durable.step:embed", "durable.result"]
    assert embed("outside") == [7.0]  # outside a workflow: a plain call


def test_spawned_steps_fan_out_and_gather_in_order(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step(queue="io")
    def square(i: int) -> int:
        return i * i

    @dur.workflow(name="fan")
    def fan(n: int) -> list[int]:
        return durable.gather(*[square.spawn(i) for i in range(n)])

    handle = fan.start(4)
    cluster.drive()
    assert handle.result(timeout=0) == [0, 1, 4, 9]


def test_a_dispatched_step_retries_where_it_runs(cluster: Cluster) -> None:
    dur = cluster.dur
    attempts: list[int] = []

    @dur.step(queue="io", retries=2, interval=0.01)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "up"

    @dur.workflow(name="uses_flaky")
    def uses_flaky() -> str:
        return flaky()

    handle = uses_flaky.start()
    cluster.drive()
    assert handle.result(timeout=0) == "up" and len(attempts) == 3
    child_steps = cluster.steps(f"{handle.workflow_id}-0")
    # the failed attempts, recorded in the step's workflow, then its success over them
    assert [(s.status.value, s.attempts, len(s.attempt_errors)) for s in child_steps] == [("SUCCESS", 3, 2)]


def test_a_step_that_keeps_dying_fails_inside_the_workflow_which_can_catch_it(cluster: Cluster) -> None:
    dur = cluster.dur
    runs: list[int] = []

    @dur.step(queue="gpu", max_recovery_attempts=2)
    def doomed() -> str:
        runs.append(1)
        raise SimulatedCrash()

    @dur.workflow(name="careful")
    def careful() -> str:
        try:
            return doomed()
        except MaxRecoveryAttemptsExceededError as exc:
            return f"fallback after: {type(exc).__name__}"

    handle = careful.start()
    cluster.drive()
    for _ in range(3):
        cluster.recover()
    assert handle.result(timeout=0) == "fallback after: AwaitedWorkflowMaxRecoveryAttemptsExceededError"
    assert len(runs) == 3
    parent = cluster.status(handle.workflow_id)
    assert parent.status is Status.SUCCESS and parent.recovery_attempts == 0  # the step's crashes, not the workflow's
    step = cluster.status(f"{handle.workflow_id}-0")
    assert step.status is Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED and step.recovery_attempts == 3


def test_after_a_crash_the_next_attempt_goes_to_on_crash_queue(cluster: Cluster) -> None:
    dur = cluster.dur
    queues_seen: list[str] = []

    @dur.step(queue="small", on_crash_queue="big", name="hungry")
    def hungry() -> str:
        queue = cluster.status(durable.context().workflow_id or "").queue
        queues_seen.append(queue)
        if queue == "small":
            raise SimulatedCrash()  # the OOM killer
        return f"done on {queue}"

    @dur.workflow(name="feeds")
    def feeds() -> str:
        return hungry()

    handle = feeds.start()
    cluster.drive()
    assert cluster.recover() == ["rerouted", "executed", "executed"]
    assert handle.result(timeout=0) == "done on big"
    assert queues_seen == ["small", "big"]
    step_id = f"{handle.workflow_id}-0"
    assert cluster.dispatcher.queues.count((step_id, "big")) == 1
    [step] = cluster.steps(step_id)
    assert step.crashes == 1 and step.last_crash is not None and '"hungry"' in step.last_crash
    assert step.status.value == "SUCCESS"  # not left RETRYING by the crash it survived


def test_an_existing_celery_task_as_a_step_keeps_its_routing(cluster: Cluster) -> None:
    dur = cluster.dur
    celery_app: Celery = dur.celery
    celery_app.conf.task_routes = {"thumbs.*": {"queue": "images"}}

    @celery_app.task(name="thumbs.resize", shared=False)
    def resize(image_id: str, width: int) -> str:
        return f"{image_id}@{width}"

    @celery_app.task(name="plain.upload", queue="uploads", shared=False)
    def upload(path: str) -> str:
        return f"uploaded {path}"

    resize_step = dur.task_step(resize, retries=3)
    upload_step = dur.task_step(upload)

    @dur.workflow(name="thumbnails")
    def thumbnails(ids: list[str]) -> list[str]:
        thumbs = durable.gather(*[resize_step.spawn(i, 128) for i in ids])
        return [upload_step(t) for t in thumbs]

    handle = thumbnails.start(["a", "b"])
    cluster.drive()
    assert handle.result(timeout=0) == ["uploaded a@128", "uploaded b@128"]
    queues = dict(cluster.dispatcher.queues)
    assert queues[f"{handle.workflow_id}-0"] == "images" and queues[f"{handle.workflow_id}-4"] == "uploads"
    assert cluster.status(f"{handle.workflow_id}-0").name == "durable.task:thumbs.resize"
    assert resize("c", 1) == "c@1"  # the task itself is unchanged
    assert "durable.task:thumbs.resize" in celery_app.tasks


def test_a_failed_step_fails_its_own_delivery_and_raises_in_the_workflow(cluster: Cluster) -> None:
    dur = cluster.dur

    @dur.step(queue="io")
    def broken() -> None:
        raise ValueError("bad input")

    @dur.workflow(name="uses_broken")
    def uses_broken() -> None:
        broken()

    handle = uses_broken.start()
    first = dur.runner.deliver(*cluster.dispatcher.pending.pop(0))
    assert first.kind == "executed" and not first.failed  # suspended on its step
    step = dur.runner.deliver(*cluster.dispatcher.pending.pop(0))
    assert step.failed and "bad input" in (step.error or "")  # Flower shows a failed task
    last = dur.runner.deliver(*cluster.dispatcher.pending.pop(0))
    assert last.failed and last.ending is not None and last.ending.kind == "ERROR"
    with pytest.raises(ValueError, match="bad input"):
        handle.result(timeout=0)


def test_dispatch_options_are_checked_where_they_are_given(cluster: Cluster) -> None:
    dur = cluster.dur
    with pytest.raises(ValueError, match="queue="):
        dur.step(on_crash_queue="big")
    with pytest.raises(ValueError, match="queue"):
        dur.step(queue="x" * 300)(lambda: None)
    with pytest.raises(ValueError, match="max_recovery_attempts"):
        dur.step(queue="q", max_recovery_attempts=-1)(lambda: None)
    with pytest.raises(TypeError, match="Celery task"):
        dur.task_step(lambda: None)

    @dur.step()
    def inline() -> None:
        pass

    with pytest.raises(TypeError, match="dispatched"):
        inline.spawn()


def test_a_higher_priority_goes_first_on_either_broker() -> None:
    from durable.dispatch import broker_priority

    assert broker_priority("amqp://guest@localhost//", 9) == 9  # RabbitMQ: the highest number first
    assert broker_priority("redis://localhost:6379/0", 9) == 0  # kombu's Redis: the lowest first
    assert broker_priority("redis://localhost:6379/0", 0) == 9
    assert broker_priority("filesystem://", 5) == 5


def test_an_existing_task_retries_as_celery_would_with_self_retry(cluster: Cluster) -> None:
    """`self.retry()` in an existing task run as a step waits its countdown
    and runs the task again (no retry message of Celery's own): the
    task's `max_retries`, and `self.request.retries` and `.id`, as in Celery."""
    dur = cluster.dur
    celery_app: Celery = dur.celery
    seen: list[tuple[int, str]] = []

    @celery_app.task(name="pay.charge", bind=True, max_retries=3, shared=False)
    def charge(self: Any, amount: int) -> str:
        seen.append((self.request.retries, self.request.id))
        if len(seen) < 3:
            raise self.retry(exc=ConnectionError("gateway down"), countdown=0.01)
        return f"charged {amount}"

    charge_step = dur.task_step(charge)  # no retry options: the task's own

    @dur.workflow(name="checkout")
    def checkout() -> str:
        return charge_step(10)

    handle = checkout.start()
    cluster.drive()
    assert handle.result(timeout=0) == "charged 10"
    step_id = f"{handle.workflow_id}-0"
    assert seen == [(0, step_id), (1, step_id), (2, step_id)]
    [step] = cluster.steps(step_id)
    assert (step.status.value, step.attempts) == ("SUCCESS", 3)
    assert all("gateway down" in e["message"] for e in step.attempt_errors or [])
    assert cluster.dispatcher.queues.count((step_id, "celery")) == 1  # retried where it ran, not re-sent


def test_an_existing_task_with_autoretry_for_gives_up_after_its_max_retries(cluster: Cluster) -> None:
    dur = cluster.dur
    celery_app: Celery = dur.celery
    runs: list[int] = []

    @celery_app.task(name="net.fetch", bind=True, autoretry_for=(ConnectionError,), max_retries=2,
                     default_retry_delay=0.01, retry_jitter=False, shared=False)
    def fetch(self: Any, url: str) -> str:
        runs.append(self.request.retries)
        raise ConnectionError(f"{url} unreachable")

    fetch_step = dur.task_step(fetch)

    @dur.workflow(name="crawl")
    def crawl() -> str:
        try:
            return fetch_step("http://example.invalid")
        except ConnectionError as exc:
            return f"gave up: {exc}"

    handle = crawl.start()
    cluster.drive()
    assert handle.result(timeout=0) == "gave up: http://example.invalid unreachable"
    assert runs == [0, 1, 2]  # the first run and max_retries=2 retries
