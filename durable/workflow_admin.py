"""Workflows as an operator finds and steers them, shared by the command
line and the dashboard: a filter (status, name, queue, creation time, text
in the ID), bulk retry of failed workflows, and records as plain JSON.

Everything goes through the management API (`Management`: a
`DurableClient` or `Durable`); nothing here speaks SQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from .client import Management
from .errors import DurableError, WorkflowNotFoundError
from .records import Status, StepStatus, WorkflowStatus

# Text in the ID is matched over the newest workflows that pass the other
# filters, read as summaries in batches, at most this many in all (the
# management API has no ID-substring filter).
ID_SEARCH_MAX_ROWS = 5000
ID_SEARCH_BATCH_ROWS = 500

# What a bulk retry touches in one call (a filter may match more: call again).
RETRY_MAX_WORKFLOWS = 500
RETRYABLE = (Status.ERROR, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED)
RETRY_SUFFIX = ":retry"

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class WorkflowFilter:
    statuses: tuple[Status, ...] = ()
    name: str | None = None
    queue: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    id_contains: str | None = None

    def list_arguments(self) -> dict[str, Any]:
        return dict(
            status=list(self.statuses) or None, name=self.name or None, queue=self.queue or None,
            created_after=self.created_after, created_before=self.created_before,
        )


def search(management: Management, where: WorkflowFilter, limit: int, offset: int = 0) -> list[WorkflowStatus]:
    """Workflow summaries (no inputs or output) newest first."""
    if not where.id_contains:
        return management.list_workflows(**where.list_arguments(), limit=limit, offset=offset)
    needle = where.id_contains.lower()
    found: list[WorkflowStatus] = []
    scanned = 0
    while scanned < ID_SEARCH_MAX_ROWS and len(found) < offset + limit:
        batch = management.list_workflows(
            **where.list_arguments(), limit=ID_SEARCH_BATCH_ROWS, offset=scanned
        )
        found += [w for w in batch if needle in w.workflow_id.lower()]
        scanned += len(batch)
        if len(batch) < ID_SEARCH_BATCH_ROWS:
            break
    return found[offset:offset + limit]


@dataclass
class RetryReport:
    """What a bulk retry did: quarantined workflows resumed in place, failed
    ones forked (`{source: fork}`), and those it could not retry."""

    resumed: list[str] = field(default_factory=list)
    forked: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    more: bool = False

    def summary(self) -> str:
        text = f"resumed {len(self.resumed)}, forked {len(self.forked)}, skipped {len(self.skipped)}"
        return text + (" (more match: run it again)" if self.more else "")


def retry_failed(management: Management, where: WorkflowFilter, limit: int = RETRY_MAX_WORKFLOWS) -> RetryReport:
    """Run failed workflows that match `where` again, newest first, at most
    `limit` of them:

    - `MAX_RECOVERY_ATTEMPTS_EXCEEDED`: resumed from its last checkpoint,
      same ID (`Management.resume`).
    - `ERROR`: an ERROR workflow never runs again under its own ID, so it is
      forked as `<id>:retry` from its first step that did not succeed (the
      checkpoints before it are reused). A second retry of the same source
      finds that ID taken and skips it: a double click forks once.

    The filter's statuses are narrowed to those two (both when it names none)."""
    statuses = tuple(s for s in (where.statuses or RETRYABLE) if s in RETRYABLE)
    report = RetryReport()
    if not statuses:
        return report
    rows = search(management, dataclasses.replace(where, statuses=statuses), limit=limit + 1)
    report.more = len(rows) > limit
    for w in rows[:limit]:
        try:
            if w.status is Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED:
                management.resume(w.workflow_id)
                report.resumed.append(w.workflow_id)
            else:
                new_id = w.workflow_id + RETRY_SUFFIX
                if _exists(management, new_id):
                    report.skipped[w.workflow_id] = f"already retried as {new_id}"
                    continue
                handle = management.fork(w.workflow_id, first_unfinished_step(management, w.workflow_id), new_id)
                report.forked[w.workflow_id] = handle.workflow_id
        except (DurableError, ValueError) as exc:
            report.skipped[w.workflow_id] = str(exc)
    return report


def first_unfinished_step(management: Management, workflow_id: str) -> int:
    """The first step that did not succeed (or the one after the last)."""
    steps = management.list_steps(workflow_id)
    for s in steps:
        if s.status is not StepStatus.SUCCESS:
            return s.step_id
    return max((s.step_id for s in steps), default=-1) + 1


def _exists(management: Management, workflow_id: str) -> bool:
    try:
        management.get(workflow_id, with_payloads=False)
    except WorkflowNotFoundError:
        return False
    return True


def parse_instant(text: str, now: dt.datetime) -> dt.datetime:
    """An instant given as ISO 8601 (`2026-05-01`, `2026-05-01T12:30`; UTC
    unless it names an offset) or as an age before `now` (`15m`, `2h`, `7d`)."""
    text = text.strip()
    age = _AGE.match(text)
    if age:
        return now - dt.timedelta(seconds=float(age.group(1)) * _UNIT_SECONDS[age.group(2)])
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-05-01T12:30) nor an age (15m, 2h, 7d)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def to_json(value: Any) -> Any:
    """Records (dataclasses, enums, datetimes) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return str(value)
