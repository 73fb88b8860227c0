"""Reading, listing and changing workflows from outside an execution:
status pages, cancel, resume, fork."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..records import ACTIVE_STATUSES, Status, StepStatus
from ..schema import steps, workflows
from .base import DedupConflict, S, StoreBase, W

# The payload columns: a list or a status check reads them only when asked
# (a workflow's inputs and output may each be megabytes).
PAYLOAD_COLUMNS = ("inputs", "output")
SUMMARY_COLUMNS = tuple(c for c in workflows.c if c.name not in PAYLOAD_COLUMNS)


class ManagementSql(StoreBase):
    def workflow_row(self, workflow_id: str) -> dict[str, Any] | None:
        with self.db.begin() as conn:
            row = conn.execute(
                select(workflows).where(W.workflow_id == workflow_id)
            ).mappings().first()
            return dict(row) if row else None

    def workflow_outcome(self, workflow_id: str) -> dict[str, Any] | None:
        with self.db.begin() as conn:
            row = conn.execute(
                select(W.status, W.output, W.error, W.parent_workflow_id).where(
                    W.workflow_id == workflow_id
                )
            ).mappings().first()
            return dict(row) if row else None

    def workflow_summary(self, workflow_id: str) -> dict[str, Any] | None:
        """A workflow's row without its inputs and output."""
        with self.db.begin() as conn:
            row = conn.execute(
                select(*SUMMARY_COLUMNS).where(W.workflow_id == workflow_id)
            ).mappings().first()
            return dict(row) if row else None

    def list_workflows(
        self,
        status: Sequence[str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
        parent_workflow_id: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
        load_input: bool = False,
        load_output: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows newest first, without `inputs` and `output` unless asked."""
        columns = [*SUMMARY_COLUMNS]
        if load_input:
            columns.append(W.inputs)
        if load_output:
            columns.append(W.output)
        query = select(*columns)
        if status:
            query = query.where(W.status.in_(list(status)))
        if name:
            query = query.where(W.name == name)
        if queue:
            query = query.where(W.queue == queue)
        if created_after_ms is not None:
            query = query.where(W.created_at_ms >= created_after_ms)
        if created_before_ms is not None:
            query = query.where(W.created_at_ms < created_before_ms)
        if parent_workflow_id is not None:
            query = query.where(W.parent_workflow_id == parent_workflow_id)
        query = query.order_by(W.created_at_ms.desc(), W.workflow_id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self.db.begin() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def count_by_status(self) -> dict[str, int]:
        with self.db.begin() as conn:
            rows = conn.execute(select(W.status, func.count()).group_by(W.status)).all()
        return {status: count for status, count in rows}

    def list_steps(self, workflow_id: str) -> list[dict[str, Any]]:
        return list(self.steps_of(workflow_id).values())

    def cancel(self, workflow_id: str, now_ms: int, error: str | None = None) -> list[str]:
        """Cancel a workflow and its active descendants; wake each one's parent.
        Returns the IDs cancelled."""
        cancelled: list[str] = []
        pending = [workflow_id]
        with self.db.begin() as conn:
            while pending:
                current = pending.pop()
                row = conn.execute(
                    update(workflows)
                    .where(W.workflow_id == current, W.status.in_(ACTIVE_STATUSES))
                    .values(
                        status=Status.CANCELLED.value, lease_owner=None,
                        lease_expires_at_ms=None, redispatch_at_ms=None,
                        completed_at_ms=now_ms, updated_at_ms=now_ms,
                        error=error if error is not None else W.error,
                    )
                    .returning(W.parent_workflow_id)
                ).first()
                if row is None:
                    continue
                cancelled.append(current)
                if row[0]:
                    self._wake(conn, row[0], now_ms)
                pending.extend(
                    conn.execute(
                        select(W.workflow_id).where(
                            W.parent_workflow_id == current, W.status.in_(ACTIVE_STATUSES)
                        )
                    ).scalars()
                )
        return cancelled

    def resume(self, workflow_id: str, now_ms: int, redelivery_ms: int) -> bool:
        """Make a cancelled or quarantined workflow runnable again."""
        try:
            with self.db.begin() as conn:
                return conn.execute(
                    update(workflows)
                    .where(
                        W.workflow_id == workflow_id,
                        W.status.in_(
                            [Status.CANCELLED.value, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value]
                        ),
                    )
                    .values(
                        status=Status.ENQUEUED.value, recovery_attempts=0, error=None,
                        lease_owner=None, lease_expires_at_ms=None, completed_at_ms=None,
                        deadline_at_ms=None, redispatch_at_ms=now_ms + redelivery_ms,
                        updated_at_ms=now_ms,
                    )
                ).rowcount == 1
        except IntegrityError:
            row = self.workflow_row(workflow_id) or {}
            raise DedupConflict(self.dedup_holder(row.get("queue", ""), row.get("dedup_key"))) from None

    def copy_steps(self, source_id: str, target_id: str, below_step_id: int) -> int:
        """Copy the final step outcomes before `below_step_id` (for fork)."""
        with self.db.begin() as conn:
            return self._copy_steps(conn, source_id, target_id, below_step_id)

    @staticmethod
    def _copy_steps(conn: Connection, source_id: str, target_id: str, below_step_id: int) -> int:
        rows = conn.execute(
            select(steps).where(
                S.workflow_id == source_id,
                S.step_id < below_step_id,
                S.status != StepStatus.RETRYING.value,
            )
        ).mappings().all()
        for r in rows:
            conn.execute(insert(steps).values(**{**dict(r), "workflow_id": target_id}))
        return len(rows)

    def fork_workflow(
        self,
        new_row: dict[str, Any],
        source_id: str,
        below_step_id: int,
        after_copy: Callable[[str, Connection], object] | None = None,
    ) -> bool:
        """Write a fork in one transaction: its row, the source's checkpoints
        before `below_step_id`, and whatever `after_copy(target_id, conn)`
        derives from them. False, and nothing written, when the new ID is
        already taken (a fork never writes into an existing workflow)."""
        target_id = new_row["workflow_id"]
        with self.db.begin() as conn:
            if not self.insert_workflow(new_row, conn=conn).created:
                return False
            self._copy_steps(conn, source_id, target_id, below_step_id)
            if after_copy is not None:
                after_copy(target_id, conn)
        return True

    def delete_workflows(self, workflow_ids: Iterable[str]) -> None:
        ids = list(workflow_ids)
        with self.db.begin() as conn:
            conn.execute(delete(steps).where(S.workflow_id.in_(ids)))
            conn.execute(delete(workflows).where(W.workflow_id.in_(ids)))

