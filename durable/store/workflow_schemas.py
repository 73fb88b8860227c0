"""The recorded parameters of registered workflows (`durable/inputs.py`):
written by workers at their start, read by clients that enqueue by name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.dialects import postgresql, sqlite

from ..database import Database
from ..schema import workflow_schemas

C = workflow_schemas.c


def record_workflow_schemas(db: Database, rows: list[dict[str, Any]]) -> None:
    """Upsert these rows (name, parameters, app_version, updated_at_ms), in
    one transaction: the newest worker's code describes each workflow."""
    if not rows:
        return
    insert = sqlite.insert if db.is_sqlite else postgresql.insert
    stmt = insert(workflow_schemas)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={c: stmt.excluded[c] for c in ("parameters", "app_version", "updated_at_ms")},
    )
    with db.begin() as conn:
        conn.execute(stmt, rows)


def workflow_schema(db: Database, name: str) -> tuple[bool, str | None]:
    """(whether any workflow is recorded at all, this one's parameters or
    None), in one query."""
    any_recorded = exists(select(C.name))
    this_one = select(C.parameters).where(C.name == name).scalar_subquery()
    with db.begin() as conn:
        row = conn.execute(select(any_recorded, this_one)).one()
    return bool(row[0]), row[1]
