"""What the recovery sweeper asks: workflows that need a message, and
workflows past their deadline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Integer, and_, bindparam, case, literal_column, or_, select, update

from ..records import ACTIVE_STATUSES
from ..schema import workflows
from ..database import Database
from .base import StoreBase, W
from .prebuilt import Prebuilt


class SweepSql(StoreBase):
    if TYPE_CHECKING:  # from ManagementSql, beside which `Store` composes this
        def cancel(self, workflow_id: str, now_ms: int, error: str | None = None) -> list[str]: ...

    def __init__(self, database: Database):
        super().__init__(database)
        # Built once: the sweeper asks every second, and building and
        # compiling them each time cost ~6 ms of the worker's CPU a pass.
        self._due_stmts = {
            expired: Prebuilt(database, _build_due(database.is_sqlite, expired)) for expired in (True, False)
        }
        self._past_deadline_stmt = Prebuilt(database, select(W.workflow_id).where(
            _ACTIVE, W.deadline_at_ms <= bindparam("now", type_=BigInteger)
        ))

    def due_for_dispatch(
        self, now_ms: int, redelivery_ms: int, limit: int = 500, expired_leases: bool = True,
        max_backoff_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Workflows that need a message: timers due, wake-ups, messages lost
        before a claim, and leases that expired. Each is marked so that the next
        sweep (in this or any other worker) leaves it alone for a while, backing
        off as the workflow waits longer (see `_build_due`)."""
        cap = redelivery_ms if max_backoff_ms is None else max(redelivery_ms, max_backoff_ms)
        return self._due_stmts[expired_leases].all(
            dict(now=now_ms, redelivery=redelivery_ms, cap=cap, lim=limit)
        )

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
        ids = [row["workflow_id"] for row in self._past_deadline_stmt.all(dict(now=now_ms))]
        cancelled: list[str] = []
        for workflow_id in ids:
            cancelled.extend(self.cancel(workflow_id, now_ms, error=error))
        return cancelled


# The active statuses written out, as the partial indexes' own predicate
# is, so that a prepared statement's plan can use them.
_ACTIVE = W.status.in_([literal_column(f"'{status}'") for status in ACTIVE_STATUSES])


def _build_due(is_sqlite: bool, expired_leases: bool) -> Any:
    """Mark the due workflows (at most `lim`) and return them. The longer
    a workflow has waited for its message, the longer until the next one
    (a long broker backlog is not flooded with duplicates), but never
    longer than `cap`."""
    now = bindparam("now", type_=BigInteger)
    redelivery = bindparam("redelivery", type_=BigInteger)
    cap = bindparam("cap", type_=BigInteger)
    lease_expired = and_(
        W.lease_owner.is_not(None),
        W.lease_expires_at_ms <= now,
        or_(W.redispatch_at_ms.is_(None), W.redispatch_at_ms <= now),
    )
    due = and_(W.lease_owner.is_(None), W.redispatch_at_ms <= now)
    candidates = (
        select(W.workflow_id)
        .where(_ACTIVE, or_(due, lease_expired) if expired_leases else due)
        .order_by(W.redispatch_at_ms)
        .limit(bindparam("lim", type_=Integer))
    )
    if not is_sqlite:
        candidates = candidates.with_for_update(skip_locked=True)
    waited = now - W.updated_at_ms
    next_ms = now + case((waited > cap, cap), (waited > redelivery, waited), else_=redelivery)
    return (
        update(workflows)
        .where(W.workflow_id.in_(candidates.scalar_subquery()))
        .values(redispatch_at_ms=next_ms)
        .returning(W.workflow_id, W.name, W.queue, W.priority)
    )
