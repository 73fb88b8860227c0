"""Workflow and step rows as the records the API returns (WorkflowStatus,
StepInfo); a stored value that cannot be read shows as text, not an error."""

from __future__ import annotations

import json
from typing import Any

from . import serialization as ser
from .errors import SerializationError
from .records import ErrorInfo, Status, StepInfo, StepStatus, WorkflowStatus, datetime_from_ms


def _error_info(text: str | None) -> ErrorInfo | None:
    try:
        record = ser.loads_error(text)
    except SerializationError as exc:  # a status page still shows the rest
        return ErrorInfo("<unreadable>", str(exc), None)
    if not record:
        return None
    return ErrorInfo(record.get("type", ""), record.get("message", ""), record.get("traceback"))


def _safe_loads(text: str | None) -> Any:
    try:
        return ser.loads(text)
    except SerializationError as exc:
        return f"<unreadable: {exc}>"


def workflow_status(
    row: dict[str, Any], with_payloads: bool = False,
    load_input: bool | None = None, load_output: bool | None = None,
) -> WorkflowStatus:
    """A row as a record; `inputs` and `output` are decoded only when asked
    (`with_payloads` asks for both) and present in the row."""
    load_input = with_payloads if load_input is None else load_input
    load_output = with_payloads if load_output is None else load_output
    return WorkflowStatus(
        workflow_id=row["workflow_id"],
        name=row["name"],
        status=Status(row["status"]),
        queue=row["queue"],
        dedup_key=row["dedup_key"],
        priority=row["priority"],
        recovery_attempts=row["recovery_attempts"],
        max_recovery_attempts=row["max_recovery_attempts"],
        parent_workflow_id=row["parent_workflow_id"],
        created_at=datetime_from_ms(row["created_at_ms"]),
        updated_at=datetime_from_ms(row["updated_at_ms"]),
        started_at=datetime_from_ms(row["started_at_ms"]),
        completed_at=datetime_from_ms(row["completed_at_ms"]),
        error=_error_info(row["error"]),
        last_death=row["last_death"],
        executor=row["executor"],
        app_version=row["app_version"],
        inputs=_safe_loads(row["inputs"]) if load_input and "inputs" in row else None,
        output=_safe_loads(row["output"]) if load_output and "output" in row else None,
    )


def step_info(row: dict[str, Any]) -> StepInfo:
    attempt_errors = row.get("attempt_errors")
    return StepInfo(
        step_id=row["step_id"],
        name=row["name"],
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        crashes=row["crashes"],
        output=_safe_loads(row["output"]),
        error=_error_info(row["error"]),
        child_workflow_id=row["child_workflow_id"],
        started_at=datetime_from_ms(row["started_at_ms"]),
        completed_at=datetime_from_ms(row["completed_at_ms"]),
        last_crash=row["last_crash"],
        attempt_errors=json.loads(attempt_errors) if attempt_errors else None,
        executor=row.get("executor"),
    )
