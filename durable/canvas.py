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
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from celery import Celery
from celery.canvas import Signature, maybe_signature

from .client import Management, WorkflowHandle
from .context import gather
from .dispatched_steps import Dispatched, task_workflow_name

CANVAS_WORKFLOW = "durable.canvas"

# Signature options that durable keeps: where the task runs, and before what.
KEPT_OPTIONS = ("queue", "priority")


class CanvasWorkflow(Protocol):
    """The registered `durable.canvas` workflow (an app.WorkflowFunction)."""

    def options(self, **options: Any) -> Any: ...
    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle: ...


def describe(signature: Any, app: Celery | None = None) -> dict[str, Any]:
    """A Celery signature or canvas as plain JSON data; a clear error for
    anything durable cannot run."""
    sig = maybe_signature(signature, app=app)
    if not isinstance(sig, Signature):
        raise TypeError(f"expected a Celery signature (task.s(...)) or canvas, got {signature!r}")
    kind = sig.get("subtask_type")
    if kind == "chain":
        return {"kind": "chain", "tasks": [describe(t, app) for t in sig.tasks]}
    if kind == "group":
        return {"kind": "group", "tasks": [describe(t, app) for t in sig.tasks]}
    if kind == "chord":
        return {
            "kind": "chord",
            "header": [describe(t, app) for t in sig.tasks],
            "body": describe(sig.body, app),
        }
    if kind is not None:
        raise ValueError(f"durable canvases support chain, group and chord; not {kind!r}")
    unsupported = sorted(k for k in ("link", "link_error", "countdown", "eta") if sig.options.get(k))
    if unsupported:
        raise ValueError(
            f"signature of {sig.task!r} has options durable does not run: {unsupported} "
            "(use a chain for what follows, and durable.sleep or a schedule for delays)"
        )
    return {
        "kind": "task",
        "task": sig.task,
        "args": list(sig.args),
        "kwargs": dict(sig.kwargs),
        "options": {k: sig.options[k] for k in KEPT_OPTIONS if sig.options.get(k) is not None},
        "immutable": bool(sig.immutable),
    }


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

    def __init__(self, workflow: CanvasWorkflow, spec: dict[str, Any]):
        self.workflow = workflow
        self.spec = spec

    def start(self, **options: Any) -> WorkflowHandle:
        handle: WorkflowHandle = self.workflow.options(**options).start(self.spec, [])
        return handle


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
        if kind == "chain":
            for member in spec["tasks"]:
                carry = [self.run(member, carry)]
            return carry[0] if carry else None
        if kind == "group":
            return gather(*[self.spawn(member, carry) for member in spec["tasks"]])
        if kind == "chord":
            results = gather(*[self.spawn(member, carry) for member in spec["header"]])
            return self.run(spec["body"], [results])
        return self.spawn(spec, carry).result()

    def spawn(self, spec: dict[str, Any], carry: list[Any]) -> WorkflowHandle:
        if spec["kind"] != "task":
            return self.workflow().start(spec, carry)
        args = tuple(spec["args"]) if spec["immutable"] else (*carry, *spec["args"])
        step = Dispatched(
            self.host, self.celery, task_workflow_name(spec["task"]), None, None, None,
            celery_task_name=spec["task"],
        )
        return step.spawn(args, dict(spec["kwargs"]), spec["options"])

