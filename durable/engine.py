"""One execution of a workflow: claim, replay, checkpoint, end or suspend.

Replay loads every checkpoint in the claim's transaction, so a completed step
costs a dictionary look-up. Steps are numbered in call order; a recorded step
whose name differs from the one the code now calls is non-determinism.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from . import serialization as ser
from .context import StepContext, _execution, _step
from .database import retry_while_unavailable
from .errors import (
    AwaitedWorkflowCancelledError,
    AwaitedWorkflowMaxRecoveryAttemptsExceededError,
    MaxRecoveryAttemptsExceededError,
    MaxStepRetriesExceededError,
    NonDeterministicWorkflowError,
    SerializationError,
    UnknownWorkflowError,
    WorkflowTimeoutError,
)
from .records import Status, StepStatus
from .retry import RetryPolicy
from .store import Claim, crash_text
from .timeouts import call_with_timeout

if TYPE_CHECKING:
    from .app import Durable, StepFunction, WorkflowFunction

logger = logging.getLogger("durable.engine")


def now_ms() -> int:
    return int(time.time() * 1000)


# How often a workflow awaiting a workflow that is not its child looks again.
_POLL_OTHER_WORKFLOW_MS = 2_000


class Suspend(BaseException):
    """Unwinds a workflow that must wait; BaseException so user code's
    `except Exception` cannot swallow it."""

    def __init__(self, wake_at_ms: int | None):
        super().__init__(wake_at_ms)
        self.wake_at_ms = wake_at_ms


class _UseRecorded(Exception):
    def __init__(self, row: dict[str, Any]):
        self.row = row


class Fenced(BaseException):
    """This execution no longer owns the workflow (cancelled, or its lease was
    taken over): stop without writing anything more."""


def outcome_error(workflow_id: str, status: str, error_text: str | None) -> BaseException:
    """The exception that awaiting a workflow which ended this way raises."""
    record = ser.loads_error(error_text) or {}
    if status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
        return AwaitedWorkflowMaxRecoveryAttemptsExceededError(
            f"workflow {workflow_id!r} was quarantined: {record.get('message', '')}"
        )
    if status == Status.CANCELLED.value:
        if record.get("type", "").endswith("WorkflowTimeoutError"):
            return WorkflowTimeoutError(record.get("message", f"workflow {workflow_id!r} timed out"))
        return AwaitedWorkflowCancelledError(f"workflow {workflow_id!r} was cancelled")
    return ser.rebuild_error(record, workflow_id)


class Execution:
    def __init__(self, durable: "Durable", claim: Claim, owner: str):
        self.durable = durable
        self.store = durable.store
        self.claim = claim
        self.owner = owner
        self.workflow_id = claim.workflow_id
        self.name = claim.name
        self.epoch = claim.epoch
        self.recovery_attempts = claim.recovery_attempts
        self.checkpoints = claim.steps
        self.next_step_id = 0
        self._crash_noted = not claim.recovered

    # --- running -----------------------------------------------------------

    def run(self, workflow: "WorkflowFunction") -> None:
        token = _execution.set(self)
        try:
            args, kwargs = ser.loads_inputs(self.claim.inputs)
            result = workflow.fn(*args, **kwargs)
            output = ser.dumps(result)
        except Suspend as suspend:
            self._suspend(suspend.wake_at_ms)
        except Fenced:
            logger.info("execution %s/%d stopped: no longer the owner", self.workflow_id, self.epoch)
        except Exception as exc:
            self._finish(Status.ERROR, error=ser.dumps_error(exc))
        else:
            self._finish(Status.SUCCESS, output=output)
        finally:
            _execution.reset(token)

    def _finish(self, status: Status, output: str | None = None, error: str | None = None) -> None:
        ended, parent = retry_while_unavailable(
            lambda: self.store.finish(
                self.workflow_id, self.epoch, status, now_ms(), output, error,
                has_parent=self.claim.parent_workflow_id is not None,
            ),
            "ending a workflow",
        )
        if ended and parent:
            self.durable.dispatcher.publish_by_id(parent)

    def _suspend(self, wake_at_ms: int | None) -> None:
        redispatch = retry_while_unavailable(
            lambda: self.store.suspend(self.workflow_id, self.epoch, wake_at_ms, now_ms()),
            "suspending a workflow",
        )
        # A wake-up that came in while we held the lease: nobody else will
        # publish it, since its message found the lease taken.
        if redispatch is not False and redispatch is not None and redispatch <= now_ms():
            self.durable.dispatcher.publish(self.workflow_id, self.name, self.claim.queue)

    # --- the step protocol ---------------------------------------------------

    def _reserve(self, name: str) -> tuple[int, dict[str, Any] | None]:
        step_id = self.next_step_id
        self.next_step_id += 1
        row = self.checkpoints.get(step_id)
        if row is not None and row["name"] != name:
            raise NonDeterministicWorkflowError(self.workflow_id, step_id, row["name"], name)
        return step_id, row

    @staticmethod
    def _replay(row: dict[str, Any], workflow_id: str) -> Any:
        if row["status"] == StepStatus.SUCCESS.value:
            return ser.loads(row["output"])
        raise ser.rebuild_error(ser.loads_error(row["error"]) or {}, workflow_id)

    def _checkpoint(self, values: dict[str, Any], conn: Any = None) -> dict[str, Any] | None:
        """Write a step row; returns the row another execution already wrote
        for this step (use its outcome), or None when ours was written."""
        values = {"workflow_id": self.workflow_id, **values}
        if conn is not None:
            written = self.store.write_step(self.epoch, values, conn=conn)
        else:
            written = retry_while_unavailable(
                lambda: self.store.write_step(self.epoch, values), "writing a checkpoint"
            )
        if written:
            return None
        return self._diagnose_unwritten(values["step_id"])

    def _diagnose_unwritten(self, step_id: int) -> dict[str, Any]:
        existing = self.store.step_row(self.workflow_id, step_id)
        if existing is not None and existing["status"] != StepStatus.RETRYING.value:
            logger.warning(
                "workflow %s step #%d was checkpointed by another execution; using its outcome",
                self.workflow_id, step_id,
            )
            return existing
        raise Fenced()

    def _note_crash(self, step_id: int, name: str, attempts: int) -> None:
        """The first unfinished step a recovered execution meets is the one the
        lost execution was in (or about to start)."""
        if self._crash_noted:
            return
        self._crash_noted = True
        self.store.record_crash(
            self.workflow_id, step_id, name,
            crash_text(self.claim.last_death, name, attempts + 1), now_ms(),
        )

    def _wait_until(self, at_ms: int) -> None:
        remaining_s = (at_ms - now_ms()) / 1000
        if remaining_s <= 0:
            return
        if remaining_s > self.durable.settings.inline_wait_max_seconds:
            raise Suspend(at_ms)
        time.sleep(remaining_s)

    # --- steps ----------------------------------------------------------------

    def run_step(self, step: "StepFunction", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        step_id, row = self._reserve(step.name)
        if row is not None and row["status"] != StepStatus.RETRYING.value:
            return self._replay(row, self.workflow_id)
        policy = step.policy
        attempts = row["attempts"] if row else 0
        errors: list[dict[str, Any]] = json.loads(row["attempt_errors"] or "[]") if row else []
        started_ms = (row or {}).get("started_at_ms") or now_ms()
        self._note_crash(step_id, step.name, attempts)
        if row is not None and row["next_attempt_at_ms"]:
            self._wait_until(row["next_attempt_at_ms"])
        while True:
            token = _step.set(StepContext(step_id, step.name, attempts, policy.max_attempts))
            existing = None

            def success_values(output: str) -> dict[str, Any]:
                return dict(
                    step_id=step_id, name=step.name, status=StepStatus.SUCCESS.value,
                    output=output, attempts=attempts + 1,
                    attempt_errors=json.dumps(errors) if errors else None,
                    started_at_ms=started_ms, completed_at_ms=now_ms(),
                )

            try:
                if step.transactional:
                    result, existing = self.durable.transactions.run(self, step, args, kwargs, success_values)
                else:
                    result = call_with_timeout(step.fn, args, kwargs, policy.timeout_seconds)
                    output = ser.dumps(result)
            except Exception as exc:
                attempts += 1
                errors.append(_attempt_error(exc, attempts))
                if isinstance(exc, SerializationError) or not policy.should_retry(exc, attempts):
                    try:
                        failure = self._step_failed(step, policy, step_id, exc, attempts, errors, started_ms)
                    except _UseRecorded as recorded:  # another execution finished this step first
                        return self._replay(recorded.row, self.workflow_id)
                    raise failure
                next_at = now_ms() + int(policy.delay_seconds(attempts) * 1000)
                existing = self._checkpoint(dict(
                    step_id=step_id, name=step.name, status=StepStatus.RETRYING.value,
                    attempts=attempts, attempt_errors=json.dumps(errors),
                    next_attempt_at_ms=next_at, started_at_ms=started_ms,
                ))
                if existing is not None:
                    return self._replay(existing, self.workflow_id)
                self._wait_until(next_at)
                continue
            finally:
                _step.reset(token)
            if not step.transactional:
                existing = self._checkpoint(success_values(output))
            if existing is not None:
                return self._replay(existing, self.workflow_id)
            return result

    def _step_failed(
        self, step: "StepFunction", policy: RetryPolicy, step_id: int, exc: Exception,
        attempts: int, errors: list[dict[str, Any]], started_ms: int,
    ) -> BaseException:
        retryable = policy.retries > 0 and isinstance(exc, policy.retry_on) and not isinstance(
            exc, policy.dont_retry_on
        )
        final: BaseException = (
            MaxStepRetriesExceededError(step.name, attempts, errors) if retryable else exc
        )
        existing = self._checkpoint(dict(
            step_id=step_id, name=step.name, status=StepStatus.ERROR.value,
            error=ser.dumps_error(final), attempts=attempts, attempt_errors=json.dumps(errors),
            started_at_ms=started_ms, completed_at_ms=now_ms(),
        ))
        if existing is not None:
            raise _UseRecorded(existing)
        return final

    # --- durable time -----------------------------------------------------------

    def durable_sleep(self, seconds: float) -> None:
        step_id, row = self._reserve("durable.sleep")
        if row is None:
            wake_at = now_ms() + int(seconds * 1000)
            existing = self._checkpoint(dict(
                step_id=step_id, name="durable.sleep", status=StepStatus.SUCCESS.value,
                output=ser.dumps(wake_at), attempts=1,
                started_at_ms=now_ms(), completed_at_ms=now_ms(),
            ))
            if existing is not None:
                wake_at = ser.loads(existing["output"])
        else:
            wake_at = ser.loads(row["output"])
        self._wait_until(wake_at)

    def checkpointed_now(self) -> float:
        return self.record_value("durable.now", time.time)

    def record_value(self, name: str, produce: Callable[[], Any]) -> Any:
        """Run `produce` once per workflow history position; replay returns the recorded value."""
        step_id, row = self._reserve(name)
        if row is not None:
            return self._replay(row, self.workflow_id)
        value = produce()
        existing = self._checkpoint(dict(
            step_id=step_id, name=name, status=StepStatus.SUCCESS.value,
            output=ser.dumps(value), attempts=1, started_at_ms=now_ms(), completed_at_ms=now_ms(),
        ))
        return value if existing is None else self._replay(existing, self.workflow_id)

    # --- children -----------------------------------------------------------------

    def start_child(self, child_row: dict[str, Any], name: str) -> str:
        step_id, row = self._reserve(f"start:{name}")
        if row is not None:
            return row["child_workflow_id"]
        if not child_row.get("workflow_id"):
            child_row["workflow_id"] = f"{self.workflow_id}-{step_id}"
        child_row["parent_workflow_id"] = self.workflow_id
        child_id = child_row["workflow_id"]
        values = dict(
            workflow_id=self.workflow_id, step_id=step_id, name=f"start:{name}",
            status=StepStatus.SUCCESS.value, output=ser.dumps(child_id), attempts=1,
            child_workflow_id=child_id, started_at_ms=now_ms(), completed_at_ms=now_ms(),
        )
        written = retry_while_unavailable(
            lambda: self.store.start_child(self.workflow_id, self.epoch, dict(child_row), values),
            "starting a child workflow",
        )
        if not written:
            existing = self._diagnose_unwritten(step_id)
            return existing["child_workflow_id"]
        self.durable.dispatcher.publish(child_id, name, child_row["queue"], child_row["priority"])
        return child_id

    def await_workflow(self, workflow_id: str, timeout: float | None = None) -> Any:
        """A workflow's outcome; suspends until it ends. With a timeout, its
        deadline is recorded first, so a replay waits for the same instant,
        and a wait that outlives it is recorded as a TimeoutError."""
        deadline_ms = None
        if timeout is not None:
            if timeout < 0:
                raise ValueError(f"timeout must be >= 0, got {timeout!r}")
            deadline_ms = self.record_value(
                "durable.result.deadline", lambda: now_ms() + int(timeout * 1000)
            )
        step_id, row = self._reserve("durable.result")
        if row is not None and row["status"] != StepStatus.RETRYING.value:
            return self._replay(row, self.workflow_id)
        outcome = retry_while_unavailable(
            lambda: self.store.workflow_outcome(workflow_id), "reading a child's status"
        )
        if outcome is None:
            from .errors import WorkflowNotFoundError

            raise WorkflowNotFoundError(workflow_id)
        status = outcome["status"]
        waiting = status in (Status.ENQUEUED.value, Status.PENDING.value)
        if waiting and (deadline_ms is None or now_ms() < deadline_ms):
            # A child wakes its parent when it ends; any other workflow is
            # looked at again every few seconds, so no waiter is left in limbo.
            wake_at = deadline_ms
            if outcome["parent_workflow_id"] != self.workflow_id:
                poll_at = now_ms() + _POLL_OTHER_WORKFLOW_MS
                wake_at = poll_at if wake_at is None else min(wake_at, poll_at)
            raise Suspend(wake_at)  # the sweeper publishes us at wake_at
        base = dict(
            step_id=step_id, name="durable.result", attempts=1, child_workflow_id=workflow_id,
            started_at_ms=now_ms(), completed_at_ms=now_ms(),
        )
        if status == Status.SUCCESS.value:
            existing = self._checkpoint(dict(base, status=StepStatus.SUCCESS.value, output=outcome["output"]))
            return ser.loads(outcome["output"]) if existing is None else self._replay(existing, self.workflow_id)
        if waiting:
            error: BaseException = TimeoutError(
                f"workflow {workflow_id!r} still {status} after {timeout}s"
            )
        else:
            error = outcome_error(workflow_id, status, outcome["error"])
        existing = self._checkpoint(dict(base, status=StepStatus.ERROR.value, error=ser.dumps_error(error)))
        if existing is not None:
            return self._replay(existing, self.workflow_id)
        raise error


def quarantine(durable: "Durable", claim: Claim) -> None:
    """The claim found the workflow lost once too often: record why, end it
    MAX_RECOVERY_ATTEMPTS_EXCEEDED (already set by the claim), wake the parent."""
    store = durable.store
    step_rows = store.list_steps(claim.workflow_id)
    in_flight = next((r for r in step_rows if r["status"] == StepStatus.RETRYING.value), None)
    if in_flight is None:
        step_id = max((r["step_id"] for r in step_rows), default=-1) + 1
        where = f"step #{step_id}"
    else:
        step_id = in_flight["step_id"]
        store.record_crash(
            claim.workflow_id, step_id, in_flight["name"],
            crash_text(claim.last_death, in_flight["name"], in_flight["attempts"] + 1), now_ms(),
        )
        where = f"step #{step_id} {in_flight['name']!r}"
    error = MaxRecoveryAttemptsExceededError(
        f"workflow {claim.workflow_id!r} lost its worker {claim.recovery_attempts} times "
        f"(max_recovery_attempts={claim.max_recovery_attempts}); last in {where}: "
        f"{claim.last_death or 'lease expired (worker gone without a report)'}"
    )
    parent = store.record_quarantine(claim.workflow_id, claim.epoch, ser.dumps_error(error), now_ms())
    logger.error("%s", error)
    if parent:
        durable.dispatcher.publish_by_id(parent)


def unknown_workflow(durable: "Durable", claim: Claim) -> None:
    error = UnknownWorkflowError(
        f"no workflow named {claim.name!r} is registered in this worker "
        f"(known: {sorted(durable.registry)[:20]})"
    )
    store = durable.store
    ended, parent = store.finish(
        claim.workflow_id, claim.epoch, Status.ERROR, now_ms(), error=ser.dumps_error(error)
    )
    logger.error("%s", error)
    if ended and parent:
        durable.dispatcher.publish_by_id(parent)


def _attempt_error(exc: BaseException, attempt: int) -> dict[str, Any]:
    record = ser.error_to_dict(exc)
    record.pop("args", None)
    record["attempt"] = attempt
    record["at_ms"] = now_ms()
    return record
