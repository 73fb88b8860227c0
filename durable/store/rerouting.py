"""Moving a workflow to another queue: a dispatched step whose process died
runs its next attempt on the step's `on_crash_queue`."""

from __future__ import annotations

from sqlalchemy import update

from ..records import Status
from ..schema import workflows
from .base import W
from .execution import ExecutionSql


class ReroutingSql(ExecutionSql):
    def reroute(
        self,
        workflow_id: str,
        epoch: int,
        queue: str,
        now_ms: int,
        redispatch_at_ms: int,
        crash: tuple[int, str, str] | None = None,
    ) -> bool:
        """Give up the lease this execution just claimed and move the
        workflow to `queue`, noting the crash (step_id, name, text) against
        the step in flight, in one transaction. The caller publishes; if that
        message is lost the sweeper publishes at `redispatch_at_ms`."""
        with self.db.begin() as conn:
            moved = conn.execute(
                update(workflows)
                .where(
                    W.workflow_id == workflow_id,
                    W.lease_epoch == epoch,
                    W.status == Status.PENDING.value,
                )
                .values(
                    queue=queue, lease_owner=None, lease_expires_at_ms=None,
                    redispatch_at_ms=redispatch_at_ms, updated_at_ms=now_ms,
                )
            ).rowcount == 1
            if moved and crash is not None:
                step_id, name, text = crash
                conn.execute(self._crash_upsert(workflow_id, step_id, name, text, now_ms))
        return moved
