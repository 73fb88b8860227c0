"""What the recovery sweeper asks: workflows that need a message, and
workflows past their deadline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, or_, select, update

from ..records import ACTIVE_STATUSES
from ..schema import workflows
from .base import StoreBase, W


class SweepSql(StoreBase):
    if TYPE_CHECKING:  # from ManagementSql, beside which `Store` composes this
        def cancel(self, workflow_id: str, now_ms: int, error: str | None = None) -> list[str]: ...

    def due_for_dispatch(
        self, now_ms: int, redelivery_ms: int, limit: int = 500, expired_leases: bool = True,
        max_backoff_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Workflows that need a message: timers due, wake-ups, messages lost
        before a claim, and leases that expired. Each is marked so that the next
        sweep (in this or any other worker) leaves it alone for a while, backing
        off as the workflow waits longer."""
        lease_expired = and_(
            W.lease_owner.is_not(None),
            W.lease_expires_at_ms <= now_ms,
            or_(W.redispatch_at_ms.is_(None), W.redispatch_at_ms <= now_ms),
        )
        due = and_(W.lease_owner.is_(None), W.redispatch_at_ms <= now_ms)
        candidates = (
            select(W.workflow_id)
            .where(W.status.in_(ACTIVE_STATUSES), or_(due, lease_expired) if expired_leases else due)
            .order_by(W.redispatch_at_ms)
            .limit(limit)
        )
        if not self.db.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        # The longer a workflow has waited for its message, the longer until
        # the next one (a long broker backlog is not flooded with
        # duplicates), but never longer than max_backoff_ms.
        waited = now_ms - W.updated_at_ms
        cap = redelivery_ms if max_backoff_ms is None else max(redelivery_ms, max_backoff_ms)
        next_ms = now_ms + case(
            (waited > cap, cap), (waited > redelivery_ms, waited), else_=redelivery_ms
        )
        with self.db.begin() as conn:
            rows = conn.execute(
                update(workflows)
                .where(W.workflow_id.in_(candidates.scalar_subquery()))
                .values(redispatch_at_ms=next_ms)
                .returning(W.workflow_id, W.name, W.queue, W.priority)
            ).mappings().all()
        return [dict(r) for r in rows]

    def dispatch_again_at(self, workflow_ids: list[str], at_ms: int) -> None:
        """Workflows whose message could not be published (the broker is
        down): due again at `at_ms`, in one statement."""
        if not workflow_ids:
            return
        with self.db.begin() as conn:
            conn.execute(
                update(workflows)
                .where(W.workflow_id.in_(workflow_ids), W.status.in_(ACTIVE_STATUSES))
                .values(redispatch_at_ms=at_ms)
            )

    def expire_deadlines(self, now_ms: int, error: str) -> list[str]:
        """Cancel workflows past their deadline; returns their IDs."""
        with self.db.begin() as conn:
            ids = conn.execute(
                select(W.workflow_id).where(
                    W.status.in_(ACTIVE_STATUSES), W.deadline_at_ms <= now_ms
                )
            ).scalars().all()
        cancelled: list[str] = []
        for workflow_id in ids:
            cancelled.extend(self.cancel(workflow_id, now_ms, error=error))
        return cancelled
