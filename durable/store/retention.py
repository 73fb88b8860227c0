"""Retention in SQL: whole trees of ended workflows, old enough, deleted
in small batches (each its own short transaction, so no long lock)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import String, any_, bindparam, delete, select
from sqlalchemy.dialects.postgresql import ARRAY

from ..records import TERMINAL_STATUSES
from ..schema import event_waiters, events, messages, steps, workflows
from .base import StoreBase, W


class RetentionSql(StoreBase):
    def old_trees(self, cutoff_ms: int, statuses: Sequence[str] | None, limit: int) -> list[str]:
        """Workflows to delete: roots (no parent) that ended before
        `cutoff_ms`, oldest first, with all their descendants; a tree with
        any descendant still running, or ended after the cutoff, is kept
        whole (children are kept while an ancestor is, and the other way)."""
        wanted = [s for s in (statuses or TERMINAL_STATUSES) if s in TERMINAL_STATUSES]
        with self.db.begin() as conn:
            roots = conn.execute(
                select(W.workflow_id)
                .where(
                    W.parent_workflow_id.is_(None), W.status.in_(wanted),
                    W.completed_at_ms < cutoff_ms,
                )
                .order_by(W.completed_at_ms)
                .limit(limit)
            ).scalars().all()
            if not roots:
                return []
            tree = (
                select(W.workflow_id.label("root"), W.workflow_id.label("workflow_id"))
                .where(self._among(W.workflow_id, list(roots)))
                .cte("tree", recursive=True)
            )
            child = workflows.alias("child")
            tree = tree.union_all(
                select(tree.c.root, child.c.workflow_id).where(
                    child.c.parent_workflow_id == tree.c.workflow_id,
                    child.c.parent_workflow_id.is_not(None),  # what the index on it holds
                )
            )
            members = conn.execute(
                select(tree.c.root, W.workflow_id, W.status, W.completed_at_ms)
                .join_from(tree, workflows, W.workflow_id == tree.c.workflow_id)
            ).all()
        keep: set[str] = set()
        by_root: dict[str, list[str]] = {}
        for root, workflow_id, status, completed_at_ms in members:
            by_root.setdefault(root, []).append(workflow_id)
            if status not in TERMINAL_STATUSES or (completed_at_ms or 0) >= cutoff_ms:
                keep.add(root)
        return [wid for root, ids in by_root.items() if root not in keep for wid in ids]

    def delete_workflows(self, workflow_ids: Iterable[str]) -> None:
        """Delete workflows with their steps, messages, events and event
        waiters, in one transaction."""
        ids = list(workflow_ids)
        if not ids:
            return
        with self.db.begin() as conn:
            conn.execute(delete(steps).where(self._among(steps.c.workflow_id, ids)))
            conn.execute(delete(messages).where(self._among(messages.c.workflow_id, ids)))
            conn.execute(delete(events).where(self._among(events.c.workflow_id, ids)))
            conn.execute(delete(event_waiters).where(self._among(event_waiters.c.waiter_workflow_id, ids)))
            conn.execute(delete(workflows).where(self._among(W.workflow_id, ids)))

    def _among(self, column: Any, ids: list[str]) -> Any:
        """`column IN ids`; on Postgres as `= ANY(array)`, one parameter
        instead of hundreds to render, send and parse."""
        if self.db.is_sqlite:
            return column.in_(ids)
        return column == any_(bindparam(None, ids, type_=ARRAY(String)))
