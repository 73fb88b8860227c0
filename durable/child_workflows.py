"""A workflow's children, through the step protocol: starting one (its row
and the step naming it commit together), and waiting for one, or for a
static chain of them, suspended until it ends. Kept apart from engine.py,
as step_attempts.py is: the execution (engine.Execution) is the host."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from . import serialization as ser
from .database import retry_while_unavailable
from .dispatch import Dispatcher
from .errors import DuplicateWorkflowError, WorkflowNotFoundError
from .records import Status, StepStatus
from .starting import derived_child_id
from .step_protocol import Position, StepHost, Suspend
from .store import DedupConflict

# How often a workflow awaiting a workflow that is not its child looks again.
POLL_OTHER_WORKFLOW_MS = 2_000


class ChildHost(StepHost, Protocol):
    """The execution whose steps start and await children."""

    epoch: int
    dispatcher: Dispatcher

    def record_success(self, position: Position, output: str, value: Any, **fields: Any) -> Any: ...
    def resolve_conflict(self, step_id: int) -> dict[str, Any]: ...
    def record_value(self, name: str, produce: Callable[[], Any]) -> Any: ...


def start_child(host: ChildHost, child_row: dict[str, Any], name: str, on_duplicate: str = "raise") -> str:
    """Start a child: its row and this step's checkpoint naming it commit
    together. When another active workflow holds the child's dedup key,
    the step records DuplicateWorkflowError and raises it, or with
    on_duplicate="return_existing" records and returns the holder's ID;
    a replay gives the same."""

    def started(row: dict[str, Any]) -> str:
        """What a recorded start gives: the child's ID (or the holder's),
        or a refused duplicate's error raised again."""
        if row["status"] == StepStatus.ERROR.value:
            host.replay(row)
        return str(row["child_workflow_id"])

    position = host.reserve(f"start:{name}")
    if position.row is not None:
        return started(position.row)
    if not child_row.get("workflow_id"):
        child_row["workflow_id"] = derived_child_id(host.workflow_id, position.step_id)
    child_row["parent_workflow_id"] = host.workflow_id
    child_id = child_row["workflow_id"]
    values = host.outcome(
        position, StepStatus.SUCCESS, output=ser.dumps(child_id), child_workflow_id=child_id
    )
    try:
        written = retry_while_unavailable(
            lambda: host.store.start_child(host.workflow_id, host.epoch, dict(child_row), values),
            "starting a child workflow", clock=host.clock,
        )
    except DedupConflict as conflict:
        holder = conflict.holder_workflow_id
        if on_duplicate == "return_existing" and holder is not None:
            outcome = host.outcome(
                position, StepStatus.SUCCESS, output=ser.dumps(holder), child_workflow_id=holder
            )
        else:
            error = DuplicateWorkflowError(child_row["dedup_key"], child_row["queue"], holder)
            outcome = host.outcome(position, StepStatus.ERROR, error=ser.dumps_error(error))
        # what this execution recorded, or what another recorded first
        return started(host.record(outcome) or outcome)
    if not written:
        return started(host.resolve_conflict(position.step_id))
    host.dispatcher.publish(child_id, name, child_row["queue"], child_row["priority"])
    return str(child_id)

def await_sequence(host: ChildHost, workflow_ids: list[str]) -> Any:
    """The outcome of workflows each started by the end of the one before
    (a static chain): the error of the first that did not succeed, else
    the last one's output. Each of them wakes this workflow only if it
    fails or is the last, so it waits suspended until then."""
    position = host.reserve("durable.chain.result")
    if position.final:
        return host.replay(position.row or {})
    outcomes = retry_while_unavailable(
        lambda: host.store.outcomes(workflow_ids), "reading a chain's outcomes", clock=host.clock
    )
    for workflow_id in workflow_ids:
        outcome = outcomes.get(workflow_id)
        if outcome is None or outcome["status"] in (Status.ENQUEUED.value, Status.PENDING.value):
            raise Suspend(None)  # the chain goes on; its end or a failure wakes us
        if outcome["status"] != Status.SUCCESS.value:
            error = ser.outcome_error(workflow_id, outcome["status"], outcome["error"])
            existing = host.record(host.outcome(
                position, StepStatus.ERROR, error=ser.dumps_error(error), child_workflow_id=workflow_id
            ))
            if existing is not None:
                return host.replay(existing)
            raise error
    last = workflow_ids[-1]
    output = outcomes[last]["output"]
    return host.record_success(position, output, ser.loads(output), child_workflow_id=last)

def await_workflow(host: ChildHost, workflow_id: str, timeout: float | None = None) -> Any:
    """A workflow's outcome; suspends until it ends. With a timeout, its
    deadline is recorded first, so a replay waits for the same instant,
    and a wait that outlives it is recorded as a TimeoutError."""
    deadline_ms = None
    if timeout is not None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        deadline_ms = host.record_value(
            "durable.result.deadline", lambda: host.clock.now_ms() + int(timeout * 1000)
        )
    position = host.reserve("durable.result")
    if position.final:
        return host.replay(position.row or {})
    outcome = retry_while_unavailable(
        lambda: host.store.workflow_outcome(workflow_id), "reading a child's status",
        clock=host.clock,
    )
    if outcome is None:
        raise WorkflowNotFoundError(workflow_id)
    status = outcome["status"]
    waiting = status in (Status.ENQUEUED.value, Status.PENDING.value)
    now = host.clock.now_ms()
    if waiting and (deadline_ms is None or now < deadline_ms):
        # A child wakes its parent when it ends; any other workflow is
        # looked at again every few seconds, so no waiter is left in limbo.
        wake_at = deadline_ms
        if outcome["parent_workflow_id"] != host.workflow_id:
            poll_at = now + POLL_OTHER_WORKFLOW_MS
            wake_at = poll_at if wake_at is None else min(wake_at, poll_at)
        raise Suspend(wake_at)  # the sweeper publishes us at wake_at
    if status == Status.SUCCESS.value:
        return host.record_success(
            position, outcome["output"], ser.loads(outcome["output"]), child_workflow_id=workflow_id
        )
    if waiting:
        error: BaseException = TimeoutError(
            f"workflow {workflow_id!r} still {status} after {timeout}s"
        )
    else:
        error = ser.outcome_error(workflow_id, status, outcome["error"])
    existing = host.record(host.outcome(
        position, StepStatus.ERROR, error=ser.dumps_error(error), child_workflow_id=workflow_id
    ))
    if existing is not None:
        return host.replay(existing)
    raise error
