"""Dispatched steps and plain Celery tasks that the integration tests run in
real worker pools (tests/test_dispatched_steps.py).

Each run of a step or task appends `<what> <pid> <pool>` to a file named by
a key the test chooses (the workflow's ID), so a test can tell which worker
pool ran what, and how often. A worker's pool name comes from
DURABLE_TEST_POOL in its environment.
"""

from __future__ import annotations

import os
import signal
import time

import durable
from durable.errors import MaxRecoveryAttemptsExceededError
from tests.workflows import effects_dir
from workers.app import app as celery_app
from workers.app import dur


def note(key: str, what: str) -> None:
    effects_dir().mkdir(parents=True, exist_ok=True)
    with open(effects_dir() / f"{key}.runs", "a") as f:
        f.write(f"{what} {os.getpid()} {os.environ.get('DURABLE_TEST_POOL', '-')}\n")


def runs(key: str) -> list[tuple[str, int, str]]:
    """(what, pid, pool) of every run noted under `key`."""
    path = effects_dir() / f"{key}.runs"
    if not path.exists():
        return []
    return [
        (what, int(pid), pool)
        for what, pid, pool in (line.split() for line in path.read_text().splitlines())
    ]


def first_run(key: str, what: str) -> bool:
    return not any(w == what for w, _, _ in runs(key))


@dur.step(name="light_work")
def light_work(key: str, label: str) -> int:
    note(key, label)
    return os.getpid()


@dur.step(queue="heavy", name="heavy_work")
def heavy_work(key: str, pause_seconds: float) -> int:
    first = first_run(key, "heavy")
    note(key, "heavy")
    if first and pause_seconds:  # the first run pauses long enough to be killed
        time.sleep(pause_seconds)
    return os.getpid()


@dur.workflow(name="heavy_and_light")
def heavy_and_light(pause_seconds: float = 0.0) -> dict:
    key = durable.context().workflow_id or ""
    before = light_work(key, "light1")
    heavy = heavy_work(key, pause_seconds)
    after = light_work(key, "light2")
    return {"light": [before, after], "heavy": heavy}


@dur.step(queue="small", on_crash_queue="big", name="needs_memory")
def needs_memory(key: str) -> str:
    pool = os.environ.get("DURABLE_TEST_POOL", "-")
    note(key, "needs_memory")
    if pool == "small":
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does on the small pool
    return pool


@dur.workflow(name="memory_hungry")
def memory_hungry() -> str:
    return needs_memory(durable.context().workflow_id or "")


@dur.step(queue="heavy", max_recovery_attempts=2, name="always_dies")
def always_dies(key: str) -> str:
    note(key, "always_dies")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@dur.workflow(name="falls_back")
def falls_back() -> str:
    try:
        return always_dies(durable.context().workflow_id or "")
    except MaxRecoveryAttemptsExceededError as exc:
        return f"fallback: {type(exc).__name__}"


@dur.workflow(name="fails_in_a_step")
def fails_in_a_step() -> None:
    refuses()


@dur.step(queue="heavy", name="refuses")
def refuses() -> None:
    raise ValueError("refused on purpose")


# --- plain Celery tasks, unchanged ------------------------------------------------


@celery_app.task(name="dispatch.stage")
def stage(value: str, label: str, key: str, pause_seconds: float = 0.0) -> str:
    """One stage of a pipeline: appends its label to the value."""
    first = first_run(key, label)
    note(key, label)
    if first and pause_seconds:
        time.sleep(pause_seconds)
    return f"{value}>{label}"


@celery_app.task(name="dispatch.gil_stage")
def gil_stage(value: str, label: str, key: str, seconds: float) -> str:
    """A stage whose one C call holds the GIL for `seconds`."""
    from tests.lease_workflows import hold_the_gil

    hold_the_gil(seconds)
    note(key, label)
    return f"{value}>{label}"


@celery_app.task(name="dispatch.retrying_stage", bind=True, max_retries=2)
def retrying_stage(self, value: str, label: str, key: str) -> str:
    """A stage whose first run asks Celery for a retry, as a task whose
    service is briefly down does."""
    note(key, f"{label}:{self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("briefly down"), countdown=0.5)
    return f"{value}>{label}"


@celery_app.task(name="dispatch.failing_stage")
def failing_stage(value: str, label: str, key: str) -> str:
    note(key, label)
    raise ValueError(f"{label} failed on {value}")


@celery_app.task(name="dispatch.note_failure")
def note_failure(task_id: str, *, key: str) -> None:
    """An error callback in Celery's older convention: the failed task's ID."""
    note(key, f"errback:{task_id}")


@celery_app.task(name="dispatch.note_failure_request")
def note_failure_request(request, exc, traceback, key: str = "") -> None:
    """An error callback in Celery's newer convention."""
    note(key, f"errback-request:{request.id}:{type(exc).__name__}")


stage_step = dur.task_step(stage, retries=1)


@dur.workflow(name="fan_out_stages")
def fan_out_stages(key: str, labels: list[str], pause_seconds: float) -> list[str]:
    return durable.gather(*[stage_step.spawn("in", label, key, pause_seconds) for label in labels])
