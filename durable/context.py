"""What workflow and step code can ask about where it runs, and the helpers
usable inside workflows: sleep, now, gather."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import WorkflowHandle
    from .engine import Execution

_execution: contextvars.ContextVar["Execution | None"] = contextvars.ContextVar(
    "durable_execution", default=None
)
_step: contextvars.ContextVar["StepContext | None"] = contextvars.ContextVar(
    "durable_step", default=None
)


@dataclass(frozen=True)
class StepContext:
    step_id: int
    step_name: str
    attempt: int  # 0-based
    max_attempts: int


@dataclass(frozen=True)
class Context:
    workflow_id: str | None
    workflow_name: str | None
    step_id: int | None
    step_name: str | None
    attempt: int | None
    max_attempts: int | None
    recovery_attempts: int
    idempotency_key: str | None  # stable across retries and recoveries of one step


def current_execution() -> "Execution | None":
    return _execution.get()


def current_step() -> StepContext | None:
    return _step.get()


def context() -> Context:
    """Where this code runs: workflow, step, attempt, and an idempotency key."""
    execution = _execution.get()
    step = _step.get()
    if execution is None:
        return Context(None, None, None, None, None, None, 0, None)
    return Context(
        workflow_id=execution.workflow_id,
        workflow_name=execution.name,
        step_id=step.step_id if step else None,
        step_name=step.step_name if step else None,
        attempt=step.attempt if step else None,
        max_attempts=step.max_attempts if step else None,
        recovery_attempts=execution.recovery_attempts,
        idempotency_key=f"{execution.workflow_id}:{step.step_id}" if step else None,
    )


def sleep(seconds: float) -> None:
    """A durable sleep: its wake-up time is checkpointed, so a recovered
    workflow does not sleep again from zero; long sleeps free the worker."""
    if seconds < 0:
        raise ValueError(f"sleep seconds must be >= 0, got {seconds!r}")
    execution = _execution.get()
    if execution is None or _step.get() is not None:
        time.sleep(seconds)
        return
    execution.durable_sleep(seconds)


def now() -> float:
    """Wall time in seconds, checkpointed: replay sees the same value."""
    execution = _execution.get()
    if execution is None or _step.get() is not None:
        return time.time()
    return execution.checkpointed_now()


def gather(*handles: "WorkflowHandle") -> list[Any]:
    """Wait for several children; results in the order given. The first error
    is raised after every child has ended."""
    results: list[Any] = []
    first_error: BaseException | None = None
    for handle in handles:
        try:
            results.append(handle.result())
        except Exception as exc:  # noqa: BLE001 - re-raised below
            results.append(exc)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results
