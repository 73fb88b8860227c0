"""What workflow and step code can ask about where it runs, and the helpers
usable inside workflows: sleep, now, gather.

The running execution is kept in a context variable. Code above the engine
(the client, the decorators) sees it only as an `ActiveExecution`, so it
can hand work to the engine without importing it.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol


class ActiveExecution(Protocol):
    """The running execution, as code outside the engine may use it."""

    workflow_id: str
    name: str
    recovery_attempts: int
    database_url: str  # the system database it checkpoints to

    def run_step(
        self, step: Any, args: tuple[Any, ...], kwargs: dict[str, Any], transactional: bool = False,
        checkpoint_success: bool = True,
    ) -> Any: ...
    def start_child(self, child_row: dict[str, Any], name: str, on_duplicate: str = "raise") -> str: ...
    def await_workflow(self, workflow_id: str, timeout: float | None = None) -> Any: ...
    def await_sequence(self, workflow_ids: list[str]) -> Any: ...
    def record_value(self, name: str, produce: Callable[[], Any]) -> Any: ...
    def durable_sleep(self, seconds: float) -> None: ...
    def checkpointed_now(self) -> float: ...
    def patched(self, change_id: str) -> bool: ...
    def send(self, workflow_id: str, message: Any, topic: str | None = None) -> None: ...
    def recv(self, topic: str | None, timeout: float | None) -> Any: ...
    def set_event(self, key: str, value: Any) -> None: ...
    def get_event(self, workflow_id: str, key: str, timeout: float | None) -> Any: ...


class Awaitable(Protocol):
    def result(self, timeout: float | None = None) -> Any: ...


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


_execution: contextvars.ContextVar[ActiveExecution | None] = contextvars.ContextVar(
    "durable_execution", default=None
)
_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "durable_step", default=None
)


@contextmanager
def enter_execution(execution: ActiveExecution) -> Iterator[None]:
    token = _execution.set(execution)
    try:
        yield
    finally:
        _execution.reset(token)


@contextmanager
def enter_step(step: StepContext) -> Iterator[None]:
    token = _step.set(step)
    try:
        yield
    finally:
        _step.reset(token)


def current_execution() -> ActiveExecution | None:
    return _execution.get()


def current_step() -> StepContext | None:
    return _step.get()


def in_workflow_code() -> ActiveExecution | None:
    """The execution when called from workflow code itself (not from a step,
    where calls are the step's own business and not checkpointed)."""
    execution = _execution.get()
    return execution if execution is not None and _step.get() is None else None


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
    execution = in_workflow_code()
    if execution is None:
        time.sleep(seconds)
        return
    execution.durable_sleep(seconds)


def now() -> float:
    """Wall time in seconds, checkpointed: replay sees the same value."""
    execution = in_workflow_code()
    if execution is None:
        return time.time()
    return execution.checkpointed_now()


def patched(change_id: str) -> bool:
    """For deploys that change a workflow's steps while executions are in
    flight: `if durable.patched("new-pricing"): <new steps> else: <old steps>`.
    True for executions that reach this point with this code (new ones, and
    replays that recorded it), False for replays recorded before the change,
    which then finish the old way. Outside a workflow: True."""
    if not isinstance(change_id, str) or not change_id or len(change_id) > 200:
        raise ValueError(f"change_id must be a non-empty string of at most 200 characters, got {change_id!r}")
    execution = in_workflow_code()
    return True if execution is None else execution.patched(change_id)


def gather(*handles: Awaitable) -> list[Any]:
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

