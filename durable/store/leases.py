"""Leases in SQL: renewing them (from the execution's process, or from a
prefork worker's main process for its children), and expiring those whose
process is known dead, so their workflows are recovered at once."""

from __future__ import annotations

import json
from typing import Any, Collection

from sqlalchemy import and_, select, update

from ..records import ACTIVE_STATUSES, Status
from ..schema import steps, workflows
from .base import S, StoreBase, W


def _links_after(carriers: list[str]) -> Any:
    """The links of the static chains these links belong to (siblings with a
    continuation): a pool child runs the next link in the delivery of the
    one before (runner.py), so the worker holds only the first one's
    message. On the parent index."""
    parents = select(W.parent_workflow_id).where(
        W.workflow_id.in_(carriers), W.continuation.is_not(None), W.parent_workflow_id.is_not(None)
    )
    return and_(
        W.parent_workflow_id.is_not(None),  # the parent index's own predicate
        W.parent_workflow_id.in_(parents.scalar_subquery()), W.continuation.is_not(None),
    )


class LeaseSql(StoreBase):
    def renew_leases(self, owner: str, epochs: dict[str, int], until_ms: int) -> set[str]:
        """Extend this process's leases; returns the workflows whose lease it no longer holds."""
        lost = set()
        with self.db.begin() as conn:
            for workflow_id, epoch in epochs.items():
                renewed = conn.execute(
                    update(workflows)
                    .where(
                        W.workflow_id == workflow_id,
                        W.lease_owner == owner,
                        W.lease_epoch == epoch,
                        W.status == Status.PENDING.value,
                    )
                    .values(lease_expires_at_ms=until_ms)
                ).rowcount
                if not renewed:
                    lost.add(workflow_id)
        return lost

    def renew_leases_of(
        self, workflow_ids: Collection[str], owners: Collection[str], until_ms: int
    ) -> int:
        """Extend, in one statement, the leases of these workflows that these
        owners hold (a worker's main process renewing for its live pool
        children); returns how many were extended. The workflow IDs keep it
        on the primary key."""
        if not workflow_ids or not owners:
            return 0
        ids, holders = sorted(workflow_ids), sorted(owners)
        with self.db.begin() as conn:
            renewed: int = conn.execute(
                update(workflows)
                .where(W.workflow_id.in_(ids), W.lease_owner.in_(holders), W.status == Status.PENDING.value)
                .values(lease_expires_at_ms=until_ms)
            ).rowcount
            renewed += conn.execute(
                update(workflows)
                .where(
                    _links_after(ids), W.workflow_id.not_in(ids),
                    W.lease_owner.in_(holders), W.status == Status.PENDING.value,
                )
                .values(lease_expires_at_ms=until_ms)
            ).rowcount
        return renewed

    def active_links_after(self, workflow_id: str) -> list[str]:
        """The unfinished links of the static chain this link belongs to:
        the one a pool child runs now in this link's delivery, if any."""
        with self.db.begin() as conn:
            return list(conn.execute(
                select(W.workflow_id).where(
                    _links_after([workflow_id]), W.workflow_id != workflow_id, W.status.in_(ACTIVE_STATUSES)
                )
            ).scalars())

    def live_leases_of_host(self, host: str, now_ms: int) -> list[dict[str, Any]]:
        """Unexpired leases held by processes of `host` (owners "host:pid")."""
        with self.db.begin() as conn:
            rows = conn.execute(
                select(W.workflow_id, W.lease_owner, W.lease_epoch, W.lease_expires_at_ms).where(
                    W.status == Status.PENDING.value,
                    W.lease_owner.startswith(f"{host}:", autoescape=True),
                    W.lease_expires_at_ms > now_ms,
                )
            ).mappings().all()
        return [dict(r) for r in rows]

    def expire_leases(self, leases: list[dict[str, Any]], death: str, now_ms: int) -> list[str]:
        """Expire these leases (rows of `live_leases_of_host`) now, each only
        if the same owner still holds it at the same epoch; returns the
        workflows whose lease was expired."""
        expired = []
        with self.db.begin() as conn:
            for lease in leases:
                done = conn.execute(
                    update(workflows)
                    .where(
                        W.workflow_id == lease["workflow_id"],
                        W.lease_owner == lease["lease_owner"],
                        W.lease_epoch == lease["lease_epoch"],
                        W.status == Status.PENDING.value,
                    )
                    .values(lease_expires_at_ms=now_ms, last_death=death)
                ).rowcount
                if done == 1:
                    expired.append(lease["workflow_id"])
        return expired

    def expire_lost_lease(self, workflow_id: str, owner: str, death: str, now_ms: int) -> bool:
        """The worker saw the process that held this lease die: let the
        redelivered message claim it at once, and remember how it died."""
        with self.db.begin() as conn:
            expired = conn.execute(
                update(workflows)
                .where(
                    W.workflow_id == workflow_id,
                    W.lease_owner == owner,
                    W.status == Status.PENDING.value,
                )
                .values(lease_expires_at_ms=now_ms, last_death=death)
            ).rowcount == 1
            if expired:
                return True
            # the process died in a chain's later link, run in this message's delivery
            expired = conn.execute(
                update(workflows)
                .where(_links_after([workflow_id]), W.lease_owner == owner, W.status == Status.PENDING.value)
                .values(lease_expires_at_ms=now_ms, last_death=death)
            ).rowcount > 0
            if expired:
                return True
            # The report came late: the lease expired and a new execution took
            # over first, noting the crash with an unknown cause. Fill it in.
            conn.execute(update(workflows).where(W.workflow_id == workflow_id).values(last_death=death))
            unknown = conn.execute(
                select(S.step_id, S.last_crash).where(
                    S.workflow_id == workflow_id, S.last_crash.is_not(None)
                )
            ).all()
            for step_id, text_ in unknown:
                crash = json.loads(text_)
                if crash.get("cause") == "unknown":
                    crash["cause"] = death
                    conn.execute(
                        update(steps)
                        .where(S.workflow_id == workflow_id, S.step_id == step_id)
                        .values(last_crash=json.dumps(crash))
                    )
            return False
