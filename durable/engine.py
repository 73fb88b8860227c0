"""One execution of a workflow: replay, checkpoint, end or suspend.

An execution starts from a claim (see `runner.py`), which carries every
checkpoint the workflow has, read in one query right after the claim took
the lease; a completed step then costs a dictionary look-up. Steps are
numbered in call order; a recorded step whose name differs from the one the
code now calls is non-determinism.

The step protocol is public, for every kind of step built on the engine
(plain steps here, messages and events in `messaging.py`, transactions in
`transactions.py`):

    position = execution.reserve(name)        # the next step number, and what is recorded there
    if position.final:
        return execution.replay(position.row)  # the recorded value, or its error raised again
    ...do the work...
    return execution.record_success(position, output_text, value)  # or record(values)

`outcome` builds a checkpoint's values; `write` stores them fenced by the
lease epoch (inside a caller's transaction if given one); `record` writes
and, when another writer got there first, `resolve_conflict` gives its
outcome (or stops this execution with `Fenced` when it no longer owns the
workflow).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sqlalchemy.engine import Connection

from . import metrics
from . import serialization as ser
from . import child_workflows, step_attempts
from .clock import Clock
from .context import enter_execution
from .database import retry_while_unavailable
from .dispatch import Dispatcher, publish_if_runnable
from .errors import NonDeterministicWorkflowError
from .records import Status, StepStatus
from .settings import Settings
from .step_protocol import Position, Step, Suspend
from .store import Claim, Store, crash_text

logger = logging.getLogger("durable.engine")


class Fenced(BaseException):
    """This execution no longer owns the workflow (cancelled, or its lease was
    taken over): stop without writing anything more."""


class TransactionalSteps(Protocol):
    """Runs a step whose writes commit with its checkpoint (transactions.py)."""

    def run(
        self, execution: "Execution", step: Step, position: "Position", args: tuple[Any, ...],
        kwargs: dict[str, Any], success: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]: ...


class WorkflowMessaging(Protocol):
    """Messages and events inside a workflow (messaging.py)."""

    def send(self, execution: "Execution", workflow_id: str, message: Any, topic: str | None) -> None: ...
    def recv(self, execution: "Execution", topic: str | None, timeout: float | None) -> Any: ...
    def set_event(self, execution: "Execution", key: str, value: Any) -> None: ...
    def get_event(
        self, execution: "Execution", workflow_id: str, key: str, timeout: float | None
    ) -> Any: ...


class Continuations(Protocol):
    """Builds the next workflow of a static chain when one ends (canvas.py)."""

    def next_row(self, claim: Claim, output: str) -> dict[str, Any] | None:
        """The next link's row; None after the last link (a workflow with a
        continuation and no next row ends its parent with its output)."""


@dataclass(frozen=True)
class Ending:
    """How an execution stopped: "SUCCESS" or "ERROR" (it ended the workflow,
    with `error` the recorded error), "suspended", or "fenced" (another
    execution owns the workflow, or it was cancelled)."""

    kind: str
    error: str | None = None
    next_link: Claim | None = None  # a chain's next link, claimed here by the end: run it now


class ClaimNextLink(Protocol):
    """Whether this process runs a static chain's next link at once (runner.py)."""

    def __call__(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The columns that claim `row` here, in the statement inserting it; None: publish it."""


@dataclass(frozen=True)
class Collaborators:
    """What an execution works with besides its claim."""

    store: Store
    dispatcher: Dispatcher
    settings: Settings
    clock: Clock
    transactions: TransactionalSteps | None = None
    messaging: WorkflowMessaging | None = None
    continuations: Continuations | None = None


class Execution:
    def __init__(
        self, claim: Claim, owner: str, collaborators: Collaborators, claim_next_link: ClaimNextLink | None = None
    ):
        self.claim = claim
        self.claim_next_link = claim_next_link
        self.next_link: Claim | None = None
        self.owner = owner
        self.store = collaborators.store
        self.dispatcher = collaborators.dispatcher
        self.settings = collaborators.settings
        self.clock = collaborators.clock
        self.collaborators = collaborators
        self.database_url = collaborators.store.db.url
        self.workflow_id = claim.workflow_id
        self.name = claim.name
        self.epoch = claim.epoch
        self.recovery_attempts = claim.recovery_attempts
        self.checkpoints = claim.steps
        self.next_step_id = 0
        self._crash_noted = not claim.recovered

    # --- running -----------------------------------------------------------

    def run(self, fn: Callable[..., Any]) -> Ending:
        """Run the workflow function to its end or its next wait."""
        with enter_execution(self):
            try:
                args, kwargs = ser.loads_inputs(self.claim.inputs)
                result = fn(*args, **kwargs)
                output = ser.dumps(result)
            except Suspend as suspend:
                self._suspend(suspend.wake_at_ms)
                return Ending("suspended")
            except Fenced:
                logger.info("execution %s/%d stopped: no longer the owner", self.workflow_id, self.epoch)
                return Ending("fenced")
            except Exception as exc:
                error = ser.dumps_error(exc)
                ended = self._finish(Status.ERROR, error=error)
                return Ending(Status.ERROR.value if ended else "fenced", error if ended else None)
            else:
                ended = self._finish(Status.SUCCESS, output=output)
                return Ending(Status.SUCCESS.value, next_link=self.next_link) if ended else Ending("fenced")

    def _finish(self, status: Status, output: str | None = None, error: str | None = None) -> bool:
        next_row = None
        ends_parent = False  # the last link of a static chain: its end is the chain's
        if status is Status.SUCCESS and self.claim.continuation and output is not None:
            try:
                if self.collaborators.continuations is None:
                    raise RuntimeError("this execution was given no chain continuations")
                next_row = self.collaborators.continuations.next_row(self.claim, output)
                ends_parent = next_row is None and self.claim.parent_workflow_id is not None
            except Exception as exc:  # the chain cannot go on: this link fails, its parent learns why
                status, output, error = Status.ERROR, None, ser.dumps_error(exc)
        claimed = None if next_row is None or self.claim_next_link is None else self.claim_next_link(next_row)
        if next_row is not None and claimed is not None:
            next_row = {**next_row, **claimed}
        if ends_parent and output is not None:
            ended, parent, parent_ended = retry_while_unavailable(
                lambda: self.store.finish_last_link(self.workflow_id, self.epoch, self.clock.now_ms(), output),
                "ending a chain", clock=self.clock,
            )
            if parent_ended is not None:
                metrics.WORKFLOWS_ENDED.labels(parent_ended, Status.SUCCESS.value).inc()
        else:
            ended, parent = retry_while_unavailable(
                lambda: self.store.finish(
                    self.workflow_id, self.epoch, status, self.clock.now_ms(), output, error,
                    has_parent=self.claim.parent_workflow_id is not None, next_row=next_row,
                ),
                "ending a workflow", clock=self.clock,
            )
        if ended and next_row is not None and claimed is not None:
            self.next_link = Claim.of_claimed_row(next_row)
        elif ended and next_row is not None:
            self.dispatcher.publish(next_row["workflow_id"], next_row["name"], next_row["queue"], next_row["priority"])
        if ended and parent:
            publish_if_runnable(self.store, self.dispatcher, parent)
        return ended

    def _suspend(self, wake_at_ms: int | None) -> None:
        redispatch = retry_while_unavailable(
            lambda: self.store.suspend(self.workflow_id, self.epoch, wake_at_ms, self.clock.now_ms()),
            "suspending a workflow", clock=self.clock,
        )
        # A wake-up that came in while we held the lease: nobody else will
        # publish it, since its message found the lease taken.
        if redispatch is not False and redispatch is not None and redispatch <= self.clock.now_ms():
            self.dispatcher.publish(self.workflow_id, self.name, self.claim.queue)

    # --- the step protocol ---------------------------------------------------

    def reserve(self, name: str) -> Position:
        """The next step number. What is recorded there must be a step of
        the same name, or the code changed under a running workflow."""
        step_id = self.next_step_id
        self.next_step_id += 1
        row = self.checkpoints.get(step_id)
        if row is not None and row["name"] != name:
            raise NonDeterministicWorkflowError(self.workflow_id, step_id, row["name"], name)
        return Position(step_id, name, row)

    def replay(self, row: dict[str, Any]) -> Any:
        """A recorded outcome: its value, or its error raised again."""
        if row["status"] == StepStatus.SUCCESS.value:
            return ser.loads(row["output"])
        raise ser.rebuild_error(ser.loads_error(row["error"]) or {}, self.workflow_id)

    def outcome(
        self,
        position: Position,
        status: StepStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        attempts: int = 1,
        attempt_errors: list[dict[str, Any]] | None = None,
        next_attempt_at_ms: int | None = None,
        child_workflow_id: str | None = None,
        started_at_ms: int | None = None,
    ) -> dict[str, Any]:
        """The checkpoint values of a step: every checkpoint is built here."""
        now = self.clock.now_ms()
        return dict(
            workflow_id=self.workflow_id, step_id=position.step_id, name=position.name,
            status=status.value, output=output, error=error, attempts=attempts,
            attempt_errors=json.dumps(attempt_errors) if attempt_errors else None,
            next_attempt_at_ms=next_attempt_at_ms, child_workflow_id=child_workflow_id,
            started_at_ms=started_at_ms if started_at_ms is not None else now,
            completed_at_ms=None if status is StepStatus.RETRYING else now,
            executor=self.owner,  # the process that ran it, in the same INSERT
        )

    def write(self, values: dict[str, Any], conn: Connection | None = None) -> bool:
        """Write a checkpoint fenced by this execution's epoch; False when it
        was refused. Inside `conn` (a caller's transaction) it is not retried."""
        if conn is not None:
            written = self.store.write_step(self.epoch, values, conn=conn)
        else:
            written = retry_while_unavailable(
                lambda: self.store.write_step(self.epoch, values), "writing a checkpoint", clock=self.clock
            )
        if written:
            metrics.CHECKPOINTS.inc()
        return written

    def record(self, values: dict[str, Any]) -> dict[str, Any] | None:
        """Write a checkpoint: None when it was written; otherwise the outcome
        another execution recorded first (see `resolve_conflict`)."""
        return None if self.write(values) else self.resolve_conflict(values["step_id"])

    def record_success(self, position: Position, output: str, value: Any, **fields: Any) -> Any:
        """Record a SUCCESS and return `value`, or what another execution recorded."""
        existing = self.record(self.outcome(position, StepStatus.SUCCESS, output=output, **fields))
        return value if existing is None else self.replay(existing)

    def resolve_conflict(self, step_id: int) -> dict[str, Any]:
        """A checkpoint was not written: another execution recorded this step
        (use its outcome), or this one no longer owns the workflow (Fenced)."""
        existing = self.store.step_row(self.workflow_id, step_id)
        if existing is not None and existing["status"] != StepStatus.RETRYING.value:
            logger.warning(
                "workflow %s step #%d was checkpointed by another execution; using its outcome",
                self.workflow_id, step_id,
            )
            return existing
        raise Fenced()

    def note_crash(self, position: Position, attempts: int) -> None:
        """The first unfinished step a recovered execution meets is the one the
        lost execution was in (or about to start)."""
        if self._crash_noted:
            return
        self._crash_noted = True
        self.store.record_crash(
            self.workflow_id, position.step_id, position.name,
            crash_text(self.claim.last_death, position.name, attempts + 1), self.clock.now_ms(),
        )

    def wait_until(self, at_ms: int) -> None:
        """Wait in the worker when it is short; suspend the workflow otherwise."""
        remaining_s = (at_ms - self.clock.now_ms()) / 1000
        if remaining_s <= 0:
            return
        if remaining_s > self.settings.inline_wait_max_seconds:
            raise Suspend(at_ms)
        self.clock.sleep(remaining_s)

    def record_value(self, name: str, produce: Callable[[], Any]) -> Any:
        """Run `produce` once per workflow history position; replay returns the recorded value."""
        position = self.reserve(name)
        if position.row is not None:
            return self.replay(position.row)
        value = produce()
        return self.record_success(position, ser.dumps(value), value)

    # --- steps ----------------------------------------------------------------

    def run_step(
        self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], transactional: bool = False,
        checkpoint_success: bool = True,
    ) -> Any:
        """A step with its retry policy: each failed attempt is recorded, so
        a recovered execution resumes the count (step_attempts.py). A
        dispatched step's own workflow passes checkpoint_success=False: its
        end records the result (a success still replaces a RETRYING row, so
        a crash or failed attempt it survived does not show as pending)."""
        return step_attempts.run_step(self, step, args, kwargs, transactional, checkpoint_success)

    def run_transactional(
        self, step: Step, position: Position, args: tuple[Any, ...], kwargs: dict[str, Any],
        success: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        """A @transaction step's attempt: its writes commit with its checkpoint (transactions.py)."""
        if self.collaborators.transactions is None:
            raise RuntimeError("this execution was given no transaction runner")
        return self.collaborators.transactions.run(self, step, position, args, kwargs, success)

    # --- durable time -----------------------------------------------------------

    def durable_sleep(self, seconds: float) -> None:
        wake_at = self.record_value("durable.sleep", lambda: self.clock.now_ms() + int(seconds * 1000))
        self.wait_until(wake_at)

    def patched(self, change_id: str) -> bool:
        """A deploy changed the code here: True for an execution that reaches
        this point with the new code (a marker is recorded at this position),
        False for one whose history was recorded before the change (its next
        position holds the old code's step, left for it to replay)."""
        name = f"durable.patch:{change_id}"
        recorded = self.checkpoints.get(self.next_step_id)
        if recorded is not None and recorded["name"] != name:
            return False
        self.record_value(name, lambda: True)
        return True

    def checkpointed_now(self) -> float:
        return float(self.record_value("durable.now", lambda: self.clock.now_ms() / 1000))

    # --- messages and events (messaging.py, through the step protocol) --------------

    def send(self, workflow_id: str, message: Any, topic: str | None = None) -> None:
        self._messaging().send(self, workflow_id, message, topic)

    def recv(self, topic: str | None, timeout: float | None) -> Any:
        return self._messaging().recv(self, topic, timeout)

    def set_event(self, key: str, value: Any) -> None:
        self._messaging().set_event(self, key, value)

    def get_event(self, workflow_id: str, key: str, timeout: float | None) -> Any:
        return self._messaging().get_event(self, workflow_id, key, timeout)

    def _messaging(self) -> WorkflowMessaging:
        if self.collaborators.messaging is None:
            raise RuntimeError("this execution was given no messaging")
        return self.collaborators.messaging

    # --- children (child_workflows.py) -------------------------------------------------

    def start_child(self, child_row: dict[str, Any], name: str, on_duplicate: str = "raise") -> str:
        return child_workflows.start_child(self, child_row, name, on_duplicate)

    def await_sequence(self, workflow_ids: list[str]) -> Any:
        return child_workflows.await_sequence(self, workflow_ids)

    def await_workflow(self, workflow_id: str, timeout: float | None = None) -> Any:
        return child_workflows.await_workflow(self, workflow_id, timeout)
