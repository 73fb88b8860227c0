"""Every error `durable` raises, under one root.

    DurableError
    ├── WorkflowNotFoundError
    ├── DuplicateWorkflowError
    ├── UnknownWorkflowError
    ├── SerializationError
    ├── NonDeterministicWorkflowError
    ├── MaxStepRetriesExceededError
    ├── MaxRecoveryAttemptsExceededError
    ├── StepTimeoutError
    ├── WorkflowFailedError
    ├── AwaitedWorkflowCancelledError
    ├── AwaitedWorkflowMaxRecoveryAttemptsExceededError
    ├── WorkflowTimeoutError
    ├── WorkflowCancelledError
    ├── NotInWorkflowError
    ├── DatabaseUnavailableError
    └── WorkflowInputError

The engine unwinds a cancelled or suspended workflow with private
BaseException signals (see `durable.engine`), so user code that catches
Exception cannot swallow a cancellation.
"""

from __future__ import annotations

from typing import Any


class DurableError(Exception):
    """Root of every error raised by durable."""


class WorkflowNotFoundError(DurableError):
    """No workflow with this ID exists."""

    def __init__(self, workflow_id: str):
        super().__init__(f"workflow {workflow_id!r} not found")
        self.workflow_id = workflow_id

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.workflow_id,))


class DuplicateWorkflowError(DurableError):
    """A non-terminal workflow already holds this deduplication key."""

    def __init__(self, dedup_key: str, queue: str, holder_workflow_id: str | None):
        super().__init__(
            f"dedup key {dedup_key!r} on queue {queue!r} is held by workflow {holder_workflow_id!r}"
        )
        self.dedup_key = dedup_key
        self.queue = queue
        self.workflow_id = holder_workflow_id

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.dedup_key, self.queue, self.workflow_id))


class UnknownWorkflowError(DurableError):
    """A message or request names a workflow this process has not registered."""


class SerializationError(DurableError):
    """A value cannot be stored as JSON, or a stored value cannot be read back."""


class NonDeterministicWorkflowError(DurableError):
    """Replay reached a recorded step but the code called a different one."""

    def __init__(self, workflow_id: str, step_id: int, recorded: str, called: str):
        super().__init__(
            f"workflow {workflow_id!r} step #{step_id}: history recorded {recorded!r} "
            f"but the code now calls {called!r}"
        )
        self.workflow_id = workflow_id
        self.step_id = step_id
        self.recorded = recorded
        self.called = called

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.workflow_id, self.step_id, self.recorded, self.called))


class MaxStepRetriesExceededError(DurableError):
    """A step failed on every attempt its retry policy allowed."""

    def __init__(self, step_name: str, attempts: int, errors: list[dict[str, Any]] | None = None):
        errors = list(errors or [])
        last = errors[-1]["message"] if errors else ""
        super().__init__(f"step {step_name!r} failed {attempts} attempt(s); last error: {last}")
        self.step_name = step_name
        self.attempts = attempts
        self.errors = errors

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.step_name, self.attempts, self.errors))


class MaxRecoveryAttemptsExceededError(DurableError):
    """The workflow lost its worker more often than max_recovery_attempts allows."""


class StepTimeoutError(DurableError):
    """A step attempt ran past its timeout."""


class WorkflowFailedError(DurableError):
    """An awaited workflow failed with an error whose type cannot be rebuilt here."""

    def __init__(self, workflow_id: str, error_type: str, message: str):
        super().__init__(f"workflow {workflow_id!r} failed: {error_type}: {message}")
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.error_message = message

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.workflow_id, self.error_type, self.error_message))


class AwaitedWorkflowCancelledError(DurableError):
    """The workflow being awaited was cancelled."""


class AwaitedWorkflowMaxRecoveryAttemptsExceededError(MaxRecoveryAttemptsExceededError):
    """The workflow being awaited (a child, or a dispatched step) was
    quarantined after too many lost executions; `except
    MaxRecoveryAttemptsExceededError` catches it."""


class WorkflowTimeoutError(DurableError):
    """The workflow passed its deadline and was cancelled."""


class WorkflowCancelledError(DurableError):
    """The workflow was cancelled (by an operator, a parent, or its deadline)."""


class NotInWorkflowError(DurableError):
    """A helper that belongs to a workflow (recv, set_event) was called
    elsewhere, or a module-level helper cannot tell which app to use."""


class DatabaseUnavailableError(DurableError):
    """The system database could not be reached in time (down, restarting,
    out of connections); nothing was written."""


class SchemaError(DurableError):
    """durable's tables are missing, older or newer than this code expects,
    or could not be migrated (the migration lock was not granted in time)."""


class WorkflowInputError(DurableError):
    """A workflow's arguments do not fit its parameters (their type hints, by
    function; the schema workers recorded, by name): `.parameter` names the
    one at fault (None when it is the call's shape). Nothing was written."""

    def __init__(self, workflow_name: str, parameter: str | None, detail: str):
        where = f"parameter {parameter!r}" if parameter is not None else "arguments"
        super().__init__(f"workflow {workflow_name!r}: {where}: {detail}")
        self.workflow_name = workflow_name
        self.parameter = parameter
        self.detail = detail

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.workflow_name, self.parameter, self.detail))


class CompensationFailedError(DurableError):
    """A saga's compensation failed for good after the error that started
    the compensating: both are kept (the workflow ends ERROR with this)."""

    def __init__(self, original: str, compensation: str):
        super().__init__(f"{original}; then compensating failed: {compensation}")
        self.original = original
        self.compensation = compensation

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.original, self.compensation))


class CircuitOpenError(DurableError):
    """A step bound to an open circuit breaker was not called."""

    def __init__(self, breaker: str, open_until_ms: int | None = None):
        super().__init__(f"circuit breaker {breaker!r} is open" + (
            f" until {open_until_ms} ms" if open_until_ms else ""
        ))
        self.breaker = breaker
        self.open_until_ms = open_until_ms

    def __reduce__(self) -> tuple[type[DurableError], tuple[Any, ...]]:
        return (type(self), (self.breaker, self.open_until_ms))


__all__ = [
    "DurableError",
    "WorkflowNotFoundError",
    "DuplicateWorkflowError",
    "UnknownWorkflowError",
    "SerializationError",
    "NonDeterministicWorkflowError",
    "MaxStepRetriesExceededError",
    "MaxRecoveryAttemptsExceededError",
    "StepTimeoutError",
    "WorkflowFailedError",
    "AwaitedWorkflowCancelledError",
    "AwaitedWorkflowMaxRecoveryAttemptsExceededError",
    "WorkflowTimeoutError",
    "WorkflowCancelledError",
    "NotInWorkflowError",
    "DatabaseUnavailableError",
    "SchemaError",
    "WorkflowInputError",
    "CompensationFailedError",
    "CircuitOpenError",
]
