"""What a step's attempts need of the engine, and of a step: a reserved
position in the workflow's history, the step itself, the execution
that checkpoints it (engine.Execution is the one), and `Suspend`, which
unwinds a workflow that must wait. Kept apart from engine.py so that
step_attempts.py and child_workflows.py, which engine.py calls, need
nothing of engine.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .clock import Clock
from .records import StepStatus
from .retry import RetryPolicy
from .settings import Settings
from .store import Store


class Step(Protocol):
    """What the engine needs of a step (app.StepFunction is one)."""

    name: str
    policy: RetryPolicy
    fn: Callable[..., Any]
    isolation: str | None  # a @transaction step's isolation level


@dataclass(frozen=True)
class Position:
    """A reserved step number and what is recorded there, if anything."""

    step_id: int
    name: str
    row: dict[str, Any] | None

    @property
    def final(self) -> bool:
        """An outcome is recorded (a RETRYING row only notes attempts or a crash)."""
        return self.row is not None and self.row["status"] != StepStatus.RETRYING.value


class StepHost(Protocol):
    """The execution a step's attempts are checkpointed in."""

    workflow_id: str
    clock: Clock
    settings: Settings
    store: Store

    def reserve(self, name: str) -> Position: ...
    def replay(self, row: dict[str, Any]) -> Any: ...
    def outcome(
        self, position: Position, status: StepStatus, *, output: str | None = None, error: str | None = None,
        attempts: int = 1, attempt_errors: list[dict[str, Any]] | None = None,
        next_attempt_at_ms: int | None = None, child_workflow_id: str | None = None,
        started_at_ms: int | None = None,
    ) -> dict[str, Any]: ...
    def record(self, values: dict[str, Any]) -> dict[str, Any] | None: ...
    def note_crash(self, position: Position, attempts: int) -> None: ...
    def wait_until(self, at_ms: int) -> None: ...
    def run_transactional(
        self, step: Step, position: Position, args: tuple[Any, ...], kwargs: dict[str, Any],
        success: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]: ...


class Suspend(BaseException):
    """Unwinds a workflow that must wait; BaseException so user code's
    `except Exception` cannot swallow it."""

    def __init__(self, wake_at_ms: int | None):
        super().__init__(wake_at_ms)
        self.wake_at_ms = wake_at_ms
