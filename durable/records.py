"""Statuses and the read-only records that management calls return."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any


class Status(str, enum.Enum):
    ENQUEUED = "ENQUEUED"
    PENDING = "PENDING"  # claimed: running or suspended
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    MAX_RECOVERY_ATTEMPTS_EXCEEDED = "MAX_RECOVERY_ATTEMPTS_EXCEEDED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self not in (Status.ENQUEUED, Status.PENDING)


ACTIVE_STATUSES = (Status.ENQUEUED.value, Status.PENDING.value)
TERMINAL_STATUSES = tuple(s.value for s in Status if s.is_terminal)


class StepStatus(str, enum.Enum):
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    RETRYING = "RETRYING"  # failed attempt(s) recorded, more allowed

    def __str__(self) -> str:
        return self.value


def datetime_from_ms(ms: int | None) -> dt.datetime | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str | None = None


@dataclass(frozen=True)
class WorkflowStatus:
    workflow_id: str
    name: str
    status: Status
    queue: str
    dedup_key: str | None
    priority: int
    recovery_attempts: int
    max_recovery_attempts: int | None  # None until first claimed: the workflow's default
    parent_workflow_id: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    error: ErrorInfo | None
    last_death: str | None = None
    executor: str | None = None
    app_version: str | None = None
    inputs: Any = None
    output: Any = None


@dataclass(frozen=True)
class StepInfo:
    step_id: int
    name: str
    status: StepStatus
    attempts: int
    crashes: int
    output: Any
    error: ErrorInfo | None
    child_workflow_id: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    last_crash: str | None = None
    attempt_errors: list[dict[str, Any]] | None = None
    executor: str | None = None  # "host:pid" of the process that ran its last attempt
