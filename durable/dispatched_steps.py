"""Steps that run as Celery tasks of their own, on their own queue.

A dispatched step (`@dur.step(queue="gpu")`, or an existing Celery task made
a step with `dur.task_step(task)`) runs as a child workflow of one step,
named `durable.step:<step>` or `durable.task:<task>`. Being a workflow gives
it everything a workflow has, with no second mechanism: its row is written
(in the same transaction as the parent's checkpoint naming it) before its
message is published; its worker claims it with its own lease and epoch;
its result is committed (the child's end) before the message is acked, and
that end wakes the parent; a lost message is published again by the
sweeper; a lost worker is a recovery counted against the step, and past its
`max_recovery_attempts` the step fails with `MaxRecoveryAttemptsExceededError`
inside the workflow, which may catch it. Retries run where the step runs;
long back-offs are database timers. The parent waits suspended, holding no
worker slot.

The child's messages are Celery tasks of the child's own name (see
`dispatch.celery_task_name`), registered by the worker binding with the
existing task's rate and time limits, so Celery applies them as it would.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, Callable, Mapping, Protocol

from celery import Celery
from celery.exceptions import Retry

from .client import Management, WorkflowHandle
from .context import current_execution, current_step, in_workflow_code
from .dispatch import STEP_PREFIX, TASK_PREFIX
from .errors import NotInWorkflowError
from .retry import RetryPolicy
from .starting import check_name, new_workflow_row, start_workflow


class StepAsWorkflow:
    """The registry entry of a dispatched step's own workflow: its body runs
    the step under its retry policy; the workflow's end records the result
    (one commit on success, not two)."""

    def __init__(self, step: "StepLike", max_recovery_attempts: int | None, on_crash_queue: str | None):
        self.step = step
        self.max_recovery_attempts = max_recovery_attempts
        self.on_crash_queue = on_crash_queue

    def fn(self, *args: Any, **kwargs: Any) -> Any:
        execution = current_execution()
        if execution is None:
            raise NotInWorkflowError("a dispatched step's workflow runs only in a worker")
        return execution.run_step(self.step, args, kwargs, checkpoint_success=False)


class StepLike(Protocol):
    name: str
    policy: RetryPolicy
    fn: Callable[..., Any]
    isolation: str | None


class Dispatched:
    """Where and how a dispatched step runs."""

    def __init__(
        self,
        host: Management,
        celery_app: Celery,
        workflow_name: str,
        queue: str | None,
        on_crash_queue: str | None,
        max_recovery_attempts: int | None,
        celery_task_name: str | None = None,
    ):
        check_name(queue, "queue", optional=True)
        check_name(on_crash_queue, "on_crash_queue", optional=True)
        check_name(workflow_name, "step name")
        if max_recovery_attempts is not None and (
            isinstance(max_recovery_attempts, bool) or not isinstance(max_recovery_attempts, int)
            or max_recovery_attempts < 0
        ):
            raise ValueError(f"max_recovery_attempts must be an integer >= 0, got {max_recovery_attempts!r}")
        self.host = host
        self.celery = celery_app
        self.workflow_name = workflow_name
        self.queue = queue
        self.on_crash_queue = on_crash_queue
        self.max_recovery_attempts = max_recovery_attempts
        self.celery_task_name = celery_task_name  # an existing task: routed as Celery routes it

    def queue_for(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: Mapping[str, Any]) -> str:
        if options.get("queue"):
            return str(_queue_name(options["queue"]))
        if self.queue:
            return self.queue
        if self.celery_task_name is None:
            return self.host.settings.default_queue
        return celery_route(self.celery, self.celery_task_name, args, kwargs, options)

    def row(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: Mapping[str, Any],
        workflow_id: str | None,
    ) -> dict[str, Any]:
        """The row of one run of the step (checked and serialized here)."""
        return new_workflow_row(
            self.host.settings,
            name=self.workflow_name,
            args=args,
            kwargs=kwargs,
            workflow_id=workflow_id,
            queue=self.queue_for(args, kwargs, options),
            priority=int(options.get("priority") or 0),
            max_recovery_attempts=self.max_recovery_attempts,
            clock=self.host.clock,
        )

    def spawn(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: Mapping[str, Any] | None = None,
        continuation: str | None = None,
    ) -> WorkflowHandle:
        """Start the step on its queue; inside a workflow, as a child whose
        ID the parent's history fixes. `continuation`: what its end starts
        next (a static chain, canvas.py)."""
        execution = in_workflow_code()
        row = self.row(args, kwargs, options or {}, "" if execution is not None else None)
        if continuation is not None:
            row["continuation"] = continuation
        if execution is not None:
            return WorkflowHandle(execution.start_child(row, self.workflow_name), self.host)
        workflow_id = start_workflow(
            self.host.store, self.host.dispatcher, row, "raise", self.host.clock
        )
        return WorkflowHandle(workflow_id, self.host)


def celery_route(
    app: Celery, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: Mapping[str, Any]
) -> str:
    """The queue Celery would send this task to: the task's own `queue`,
    then `task_routes`, then the default queue."""
    merged = dict(options)
    task = app.tasks.get(task_name)
    if task is not None and getattr(task, "queue", None) and "queue" not in merged:
        merged["queue"] = task.queue
    router = app.amqp.router
    if not router.routes:  # what route() gives then, without its work (on every link of a chain)
        return str(_queue_name(merged.get("queue") or app.conf.task_default_queue))
    route = router.route(merged, task_name, args, kwargs)
    return str(_queue_name(route.get("queue") or app.conf.task_default_queue))


def _queue_name(queue: Any) -> str:
    return str(getattr(queue, "name", queue))


def step_workflow_name(step_name: str) -> str:
    return f"{STEP_PREFIX}{step_name}"


def task_workflow_name(task_name: str) -> str:
    return f"{TASK_PREFIX}{task_name}"


class TaskStep:
    """An existing Celery task as a durable step (`dur.task_step(task)`):
    inside a workflow, calling it runs the task on its queue and returns its
    result; `spawn` starts it and returns a handle. Outside a workflow a call
    runs the task here, as calling a Celery task does."""

    def __init__(self, task: Any, dispatched: Dispatched, policy: RetryPolicy):
        self.task = task
        self.name: str = task.name
        self.policy = policy
        self.isolation: str | None = None
        self.dispatched = dispatched
        functools.update_wrapper(self, task, updated=())

    @property
    def fn(self) -> Callable[..., Any]:
        return self._run_as_a_retrying_worker_would

    def _run_as_a_retrying_worker_would(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task (its own `__call__`, which pushes its request) on a
        request like the one Celery's eager runs give: `self.retry()`, and
        `autoretry_for`, raise Celery's `Retry` with its countdown instead
        of sending a retry message of their own (`retry_after` turns it
        into the step's next attempt), and check the task's `max_retries`
        against `self.request.retries`, the attempts before this one. The
        request's ID is the step's workflow ID, the same for every attempt,
        as a Celery task's is across its retries."""
        step = current_step()
        execution = current_execution()
        self.task.push_request(
            id=execution.workflow_id if execution is not None else None,
            retries=step.attempt if step is not None else 0,
            is_eager=True, called_directly=False,
        )
        try:
            return self.task(*args, **kwargs)  # Task.__call__ keeps what the request above set
        finally:
            self.task.pop_request()

    @staticmethod
    def retry_after(exc: BaseException) -> float | None:
        """Seconds to the next attempt when the task asked Celery for a
        retry (`Retry`: its countdown, or its eta from now), else None."""
        if not isinstance(exc, Retry):
            return None
        when = exc.when
        if isinstance(when, dt.datetime):  # a naive eta is UTC, as Celery takes it by default
            aware = when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)
            return max(0.0, (aware - dt.datetime.now(dt.timezone.utc)).total_seconds())
        return max(0.0, float(when or 0))

    def spawn(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        return self.dispatched.spawn(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if in_workflow_code() is not None:
            return self.spawn(*args, **kwargs).result()
        return self.task(*args, **kwargs)
