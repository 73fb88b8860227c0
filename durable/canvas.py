"""Existing Celery canvases made durable, as they are:

    dur.chain(resize.s("img-1", 128), upload.s(), notify.si("done")).start(workflow_id="img-1")
    dur.group(*[resize.s(i, 128) for i in ids]).start()
    dur.chord([resize.s(i, 128) for i in ids], combine.s()).start()

The canvas is stored as JSON (task names, args, kwargs, the queue and
priority options, immutability) as the input of one workflow,
`durable.canvas`, which walks it: each task runs as a dispatched step of
that task (`durable.task:<name>`) on the queue Celery's routing gives it. As
in Celery, `.s()` receives the previous result as its first argument and
`.si()` does not; a group's result is the list of its members' results, and
a chord's body receives that list. A group member that is itself a canvas
runs as a child canvas workflow, so the members still run side by side.

A chain of plain tasks is static: each task's end starts the next one (its
row is inserted in the statement that records the task's result, then
published), and the last task's end is the chain's: it ends the canvas
workflow with its result in the same statement. Started from outside a
workflow, the canvas is written already waiting on its first task (the
canvas row, its checkpoint naming the task, and the task's row, in one
statement) and only the first task is published: the canvas workflow
never executes unless a task fails (it is woken, replays, calls the
failed task's error callbacks, `link_error`, and ends with the error). One broker hop and two commits per task, no round trip
through the workflow; recovery is unchanged, since every link is a row
before its message exists. A worker that consumes the next link's queue
runs it in the same delivery instead, claimed by the statement that
inserts it: no broker hop and one commit (runner.py, local_links.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any, Callable, Protocol

from celery import Celery
from celery.app.task import Context
from celery.canvas import Signature, maybe_signature
from celery.utils.functional import arity_greater

from . import serialization as ser
from . import tracing
from .client import Management, WorkflowHandle
from .context import gather, in_workflow_code
from .dispatched_steps import Dispatched, task_workflow_name
from .errors import AwaitedWorkflowCancelledError, NotInWorkflowError
from .records import Status, StepStatus
from .retry import RetryPolicy
from .starting import StartOptions, derived_child_id, new_workflow_row
from .store import Claim

CANVAS_WORKFLOW = "durable.canvas"

# Signature options that durable keeps: where the task runs, and before what.
KEPT_OPTIONS = ("queue", "priority")

logger = logging.getLogger("durable.canvas")

# What `start()` takes (Celery's names for some are mapped in `Canvas.apply_async`).
START_OPTIONS = frozenset(field.name for field in dataclasses.fields(StartOptions))

# Start options with which a static chain's canvas is written already
# waiting on its first task; any other (a queue, which may be limited, a
# dedup key, a delay, a timeout...) starts the canvas workflow, which
# starts the first task.
WAITING_START_OPTIONS = frozenset({"workflow_id", "priority", "max_recovery_attempts", "on_duplicate"})


class CanvasWorkflow(Protocol):
    """The registered `durable.canvas` workflow (an app.WorkflowFunction)."""

    def options(self, **options: Any) -> Any: ...
    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle: ...


def describe(signature: Any, app: Celery | None = None, errbacks: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A Celery signature or canvas as plain JSON data; a clear error for
    anything durable cannot run. `errbacks`: the `link_error` signatures
    of the chains around it, which Celery applies to each of their tasks."""
    sig = maybe_signature(signature, app=app)
    if not isinstance(sig, Signature):
        raise TypeError(f"expected a Celery signature (task.s(...)) or canvas, got {signature!r}")
    kind = sig.get("subtask_type")
    errbacks = (*errbacks, *(describe_errback(e, app) for e in sig.options.get("link_error") or ()))
    if kind == "chain":
        return {"kind": "chain", "tasks": [describe(t, app, errbacks) for t in sig.tasks]}
    if kind in ("group", "chord"):
        members = [describe(t, app) for t in sig.tasks]
        body = [describe(sig.body, app)] if kind == "chord" else []
        if errbacks or any(has_errbacks(m) for m in members + body):
            raise ValueError(
                f"link_error in a {kind}: durable runs error callbacks of the tasks of a chain, "
                "or of a task alone (catch the error in a workflow for the rest)"
            )
        if kind == "group":
            return {"kind": "group", "tasks": members}
        return {"kind": "chord", "header": members, "body": body[0]}
    if kind is not None:
        raise ValueError(f"durable canvases support chain, group and chord; not {kind!r}")
    unsupported = sorted(k for k in ("link", "countdown", "eta") if sig.options.get(k))
    if unsupported:
        raise ValueError(
            f"signature of {sig.task!r} has options durable does not run: {unsupported} "
            "(use a chain for what follows, and durable.sleep or a schedule for delays)"
        )
    spec = {
        "kind": "task",
        "task": sig.task,
        "args": list(sig.args),
        "kwargs": dict(sig.kwargs),
        "options": {k: sig.options[k] for k in KEPT_OPTIONS if sig.options.get(k) is not None},
        "immutable": bool(sig.immutable),
    }
    if errbacks:
        spec["errbacks"] = list(errbacks)
    return spec


def describe_errback(errback: Any, app: Celery | None) -> dict[str, Any]:
    """An error callback: a plain task signature, run when the task it is
    linked to fails (`run_errbacks`)."""
    spec = describe(errback, app)
    if spec["kind"] != "task" or "errbacks" in spec:
        raise ValueError(f"an error callback must be a plain task signature, got {errback!r}")
    return spec


def has_errbacks(spec: dict[str, Any]) -> bool:
    if spec["kind"] == "task":
        return bool(spec.get("errbacks"))
    members = spec.get("tasks", []) + spec.get("header", []) + ([spec["body"]] if "body" in spec else [])
    return any(has_errbacks(m) for m in members)


def signatures(items: Any, app: Celery | None = None) -> list[Signature]:
    """Each item as a Celery signature, or a clear error naming the one that is not."""
    checked = []
    for item in items:
        sig = maybe_signature(item, app=app) if isinstance(item, (dict, Signature)) else None
        if not isinstance(sig, Signature):
            raise TypeError(f"expected a Celery signature (task.s(...)) or canvas, got {item!r}")
        checked.append(sig)
    return checked


class Canvas:
    """A durable canvas not started yet: `.start(workflow_id=..., ...)`
    takes a workflow's start options and returns its handle."""

    def __init__(
        self, workflow: CanvasWorkflow, spec: dict[str, Any],
        host: Management | None = None, celery_app: Celery | None = None,
    ):
        self.workflow = workflow
        self.spec = spec
        self.host = host
        self.celery = celery_app

    def start(self, **options: Any) -> WorkflowHandle:
        if (
            self.host is not None and self.celery is not None and is_static_chain(self.spec)
            and set(options) <= WAITING_START_OPTIONS and in_workflow_code() is None
        ):
            with tracing.enqueue_span(CANVAS_WORKFLOW, None):
                return self.start_waiting(self.host, self.celery, StartOptions(**options))
        handle: WorkflowHandle = self.workflow.options(**options).start(self.spec, [])
        return handle

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> WorkflowHandle:
        """`start()` under Celery's name, so a canvas's calls stay as they
        were once `chain(` is `dur.chain(`: `task_id` is the workflow ID,
        `countdown` its `delay` and `eta` its `start_at`, `link_error` its
        `on_error`; `queue`, `priority` and durable's own start options pass
        through. Arguments for the first task, and options durable does not
        run (`link`, `expires`, ...), are refused before anything is written."""
        if args or kwargs:
            raise TypeError(
                "a durable canvas's apply_async() takes no arguments: give them to the first signature"
            )
        celery_names = {"task_id": task_id, "countdown": options.pop("countdown", None),
                        "eta": options.pop("eta", None)}
        errbacks = options.pop("link_error", None)
        unknown = sorted(set(options) - START_OPTIONS)
        if unknown:
            raise TypeError(
                f"apply_async() of a durable canvas got options durable does not run: {unknown} "
                f"(it takes task_id, countdown, eta and {sorted(START_OPTIONS)})"
            )
        for durable_name, value in (("workflow_id", celery_names["task_id"]), ("delay", celery_names["countdown"]),
                                    ("start_at", celery_names["eta"])):
            if value is not None:
                options[durable_name] = value
        if errbacks is not None:
            for errback in errbacks if isinstance(errbacks, (list, tuple)) else [errbacks]:
                self.on_error(errback)
        return self.start(**options)

    def delay(self) -> WorkflowHandle:
        """`apply_async()` with no options, as Celery's `delay()` of a canvas."""
        return self.apply_async()

    def on_error(self, errback: Any) -> "Canvas":
        """Celery's `chain(...).on_error(errback)`: `errback` runs when any
        task of the chain fails (`run_errbacks`); returns this canvas."""
        described = describe_errback(errback, self.celery)

        def linked(spec: dict[str, Any]) -> dict[str, Any]:
            if spec["kind"] == "task":
                return {**spec, "errbacks": [*spec.get("errbacks", []), described]}
            if spec["kind"] == "chain":
                return {**spec, "tasks": [linked(t) for t in spec["tasks"]]}
            raise ValueError(f"on_error of a {spec['kind']}: durable runs error callbacks of the tasks of a chain")

        self.spec = linked(self.spec)
        return self

    link_error = on_error

    def start_waiting(self, host: Management, celery_app: Celery, opts: StartOptions) -> WorkflowHandle:
        """A static chain: the canvas row, as its workflow's first execution
        would leave it (suspended, its checkpoint #0 naming the first task),
        and the first task's row, in one statement; then the first task's
        message. An existing workflow ID returns that workflow's handle."""
        row = new_workflow_row(
            host.settings, name=CANVAS_WORKFLOW, args=(self.spec, []), kwargs={},
            workflow_id=opts.workflow_id, priority=opts.priority,
            max_recovery_attempts=opts.max_recovery_attempts, clock=host.clock,
        )
        canvas_id, now = row["workflow_id"], row["created_at_ms"]
        row.update(status=Status.PENDING.value, redispatch_at_ms=None, started_at_ms=now)
        tasks = self.spec["tasks"]
        first = task_of(host, celery_app, tasks[0]).row(
            arguments(tasks[0], []), dict(tasks[0]["kwargs"]), tasks[0]["options"], derived_child_id(canvas_id, 0)
        )
        first["parent_workflow_id"] = canvas_id
        first["continuation"] = json.dumps({"index": 1, "rest": tasks[1:]})
        checkpoint = dict(  # what Execution.start_child records at step #0
            workflow_id=canvas_id, step_id=0, name=f"start:{first['name']}", status=StepStatus.SUCCESS.value,
            output=ser.dumps(first["workflow_id"]), attempts=1, child_workflow_id=first["workflow_id"],
            started_at_ms=now, completed_at_ms=now,
        )
        if host.store.start_waiting_on_child(row, checkpoint, first):
            host.start_dispatcher.publish(first["workflow_id"], first["name"], first["queue"], first["priority"])
        return WorkflowHandle(canvas_id, host)


def is_static_chain(spec: dict[str, Any]) -> bool:
    """A chain of plain tasks: each task's end starts the next one."""
    return spec["kind"] == "chain" and bool(spec["tasks"]) and all(t["kind"] == "task" for t in spec["tasks"])


class CanvasRunner:
    """The body of `durable.canvas`: walks the stored canvas inside the
    workflow, each task a dispatched step, each wait a checkpointed result."""

    def __init__(self, host: Management, celery_app: Celery, workflow: Callable[[], CanvasWorkflow]):
        self.host = host
        self.celery = celery_app
        self.workflow = workflow  # the registered durable.canvas, to start nested canvases

    def __call__(self, spec: dict[str, Any], carry: list[Any]) -> Any:
        return self.run(spec, carry)

    def run(self, spec: dict[str, Any], carry: list[Any]) -> Any:
        """`carry` is [the previous result] after a task, [] at the start."""
        kind = spec["kind"]
        if is_static_chain(spec):
            return self.run_static_chain(spec["tasks"], carry)
        if kind == "chain":
            for member in spec["tasks"]:
                carry = [self.run(member, carry)]
            return carry[0] if carry else None
        if kind == "group":
            return gather(*[self.spawn(member, carry) for member in spec["tasks"]])
        if kind == "chord":
            results = gather(*[self.spawn(member, carry) for member in spec["header"]])
            return self.run(spec["body"], [results])
        handle = self.spawn(spec, carry)
        try:
            return handle.result()
        except Exception as exc:
            self.run_errbacks(spec, {"id": handle.workflow_id, "args": list(arguments(spec, carry))}, exc)
            raise

    def run_static_chain(self, tasks: list[dict[str, Any]], carry: list[Any]) -> Any:
        execution = in_workflow_code()
        if execution is None:
            raise NotInWorkflowError("a durable canvas runs inside its workflow")
        # every link carries a continuation, the last one an empty rest: its end ends this workflow
        continuation = json.dumps({"index": 1, "rest": tasks[1:]})
        first = self.spawn(tasks[0], carry, continuation).workflow_id
        links = [first] + [derived_child_id(first, index) for index in range(1, len(tasks))]
        try:
            return execution.await_sequence(links)
        except Exception as exc:
            if any(t.get("errbacks") for t in tasks):
                failed = execution.record_value("durable.chain.failed_link", lambda: self._first_failed(links))
                self.run_errbacks(tasks[links.index(failed["id"])], failed, exc)
            raise

    def _first_failed(self, links: list[str]) -> dict[str, Any]:
        """The link whose error ended the chain: its ID and the arguments it ran with."""
        outcomes = self.host.store.outcomes(links)
        link = next(link for link in links if outcomes.get(link, {}).get("status") != Status.SUCCESS.value)
        row = self.host.store.workflow_row(link) or {}
        args = ser.loads_inputs(row["inputs"])[0] if row.get("inputs") else []
        return {"id": link, "args": args}

    def run_errbacks(self, spec: dict[str, Any], failed: dict[str, Any], exc: Exception) -> None:
        """Celery's error callbacks of a failed task, in order, each a step
        of this workflow; the canvas then ends with the task's error, as in
        Celery. `failed`: the task's ID (its step's workflow ID) and the
        arguments it ran with. An errback whose task takes (request, exc,
        traceback) is called so, here; one that takes a task ID runs as a
        task on its queue, given the failed task's ID. A failing errback is
        logged and leaves the task's error as the outcome, as in Celery."""
        if isinstance(exc, AwaitedWorkflowCancelledError):
            return  # a revoked task calls no errback in Celery either
        execution = in_workflow_code()
        failed_id = failed["id"]
        for errback in spec.get("errbacks", []):
            task = self.celery.tasks.get(errback["task"])
            try:
                if execution is not None and task is not None and takes_request(task):
                    request = Context(
                        id=failed_id, task=spec["task"], args=failed["args"], kwargs=dict(spec["kwargs"])
                    )
                    execution.run_step(
                        ErrbackStep(task), arguments(errback, [request, exc, None]), dict(errback["kwargs"])
                    )
                else:
                    self.spawn(errback, [failed_id]).result()
            except Exception:  # noqa: BLE001 - logged, as Celery logs a failed errback
                logger.exception("error callback %s of %s failed", errback["task"], failed_id)

    def spawn(self, spec: dict[str, Any], carry: list[Any], continuation: str | None = None) -> WorkflowHandle:
        if spec["kind"] != "task":
            return self.workflow().start(spec, carry)
        return task_of(self.host, self.celery, spec).spawn(
            arguments(spec, carry), dict(spec["kwargs"]), spec["options"], continuation
        )


def takes_request(task: Any) -> bool:
    """Whether Celery calls this errback with (request, exc, traceback)
    rather than publishing it with the failed task's ID: Celery's own test."""
    header = getattr(task, "__header__", None)
    return header is not None and not isinstance(header, functools.partial) and arity_greater(header, 1)


class ErrbackStep:
    """An errback called with the failed task's request, as a step of the
    canvas workflow: recorded once, no retries."""

    def __init__(self, task: Any):
        self.name = f"errback:{task.name}"
        self.policy = RetryPolicy()
        self.fn: Callable[..., Any] = task
        self.isolation: str | None = None


class ChainContinuations:
    """Builds the next link of a static chain from the one that just
    succeeded: a sibling (same parent) whose ID follows from the first
    link's, its first argument the result, unless the signature is immutable."""

    def __init__(self, host: Management, celery_app: Celery):
        self.host = host
        self.celery = celery_app
        self._tasks: dict[str, Dispatched] = {}  # by task name: built once per process

    def next_row(self, claim: Claim, output: str) -> dict[str, Any] | None:
        continuation = json.loads(claim.continuation or "null")
        if not continuation or not continuation.get("rest"):
            return None
        first = continuation.get("first") or claim.workflow_id
        index = int(continuation["index"])
        spec, after = continuation["rest"][0], continuation["rest"][1:]
        task = self._tasks.get(spec["task"])
        if task is None:
            task = self._tasks[spec["task"]] = task_of(self.host, self.celery, spec)
        row = task.row(
            arguments(spec, [ser.loads(output)]), dict(spec["kwargs"]), spec["options"],
            derived_child_id(first, index),
        )
        row["parent_workflow_id"] = claim.parent_workflow_id
        row["continuation"] = json.dumps({"first": first, "index": index + 1, "rest": after})
        return row


def task_of(host: Management, celery_app: Celery, spec: dict[str, Any]) -> Dispatched:
    return Dispatched(
        host, celery_app, task_workflow_name(spec["task"]), None, None, None, celery_task_name=spec["task"],
    )


def arguments(spec: dict[str, Any], carry: list[Any]) -> tuple[Any, ...]:
    """A task's arguments: the previous result first, as Celery passes it, unless `.si()`."""
    return tuple(spec["args"]) if spec["immutable"] else (*carry, *spec["args"])

