"""All SQL durable runs against its own tables.

Every write that belongs to an execution is fenced by the lease epoch the
execution claimed, so a zombie (a frozen or partitioned worker whose lease
was taken over) cannot overwrite the new owner's results. Step outcomes are
keyed by (workflow_id, step_id): a second writer of the same outcome hits the
primary key and is detected, never silently accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import (
    Integer,
    BigInteger,
    String,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .database import Database
from .records import ACTIVE_STATUSES, Status, StepStatus
from .schema import steps, workflows

W = workflows.c
S = steps.c

_STEP_COLUMNS = (
    "workflow_id", "step_id", "name", "status", "output", "error", "attempt_errors",
    "attempts", "child_workflow_id", "next_attempt_at_ms", "started_at_ms", "completed_at_ms",
)
_STEP_TYPES = {
    "workflow_id": String, "step_id": Integer, "name": String, "status": String,
    "output": Text, "error": Text, "attempt_errors": Text, "attempts": Integer,
    "child_workflow_id": String, "next_attempt_at_ms": BigInteger,
    "started_at_ms": BigInteger, "completed_at_ms": BigInteger,
}


@dataclass(frozen=True)
class Claim:
    """What an execution learns when it takes the lease."""

    workflow_id: str
    name: str
    status: str  # PENDING, or MAX_RECOVERY_ATTEMPTS_EXCEEDED when quarantined at this claim
    epoch: int
    inputs: str
    recovered: bool
    recovery_attempts: int
    max_recovery_attempts: int
    queue: str
    parent_workflow_id: str | None
    deadline_at_ms: int | None
    last_death: str | None
    steps: dict[int, dict[str, Any]]


@dataclass(frozen=True)
class StartResult:
    created: bool
    workflow_id: str  # the new workflow, or the existing one with that ID


class DedupConflict(Exception):
    def __init__(self, holder_workflow_id: str | None):
        self.holder_workflow_id = holder_workflow_id


class Store:
    def __init__(self, database: Database):
        self.db = database
        self._insert = sqlite.insert if database.is_sqlite else postgresql.insert
        self._fenced_step_upsert = self._build_fenced_step_upsert()

    # --- starting ----------------------------------------------------------

    def insert_workflow(self, row: dict[str, Any], conn: Connection | None = None) -> StartResult:
        """Insert a workflow; an existing ID returns that workflow instead, a held
        dedup key raises DedupConflict. Both are decided by constraints."""
        # RETURNING, not rowcount: SQLAlchemy does not promise an INSERT's rowcount on every driver
        stmt = (
            self._insert(workflows)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["workflow_id"])
            .returning(W.workflow_id)
        )
        try:
            if conn is not None:
                with conn.begin_nested():
                    inserted = conn.execute(stmt).first()
            else:
                with self.db.begin() as c:
                    inserted = c.execute(stmt).first()
        except IntegrityError:
            raise DedupConflict(self.dedup_holder(row["queue"], row["dedup_key"])) from None
        return StartResult(created=inserted is not None, workflow_id=row["workflow_id"])

    def dedup_holder(self, queue: str, dedup_key: str | None) -> str | None:
        with self.db.begin() as conn:
            return conn.execute(
                select(W.workflow_id).where(
                    W.queue == queue, W.dedup_key == dedup_key, W.status.in_(ACTIVE_STATUSES)
                )
            ).scalar()

    # --- the claim ---------------------------------------------------------

    def claim(
        self,
        workflow_id: str,
        owner: str,
        now_ms: int,
        lease_ms: int,
        default_max_recovery: Callable[[str], int] = lambda name: 10,
    ) -> Claim | None:
        """Take the lease if nobody holds a live one. A previous execution that
        still held a lease was lost: that counts as a recovery, in the same
        statement; past max_recovery_attempts the workflow is quarantined."""
        with self.db.begin() as conn:
            row = conn.execute(
                select(
                    W.name, W.status, W.lease_owner, W.lease_epoch, W.lease_expires_at_ms,
                    W.recovery_attempts, W.max_recovery_attempts, W.inputs, W.queue,
                    W.parent_workflow_id, W.deadline_at_ms, W.last_death,
                ).where(W.workflow_id == workflow_id)
            ).mappings().first()
            if row is None or row["status"] not in ACTIVE_STATUSES:
                return None
            if row["lease_owner"] is not None and (row["lease_expires_at_ms"] or 0) > now_ms:
                return None  # a live execution holds it
            recovered = row["lease_owner"] is not None
            attempts = row["recovery_attempts"] + (1 if recovered else 0)
            max_recovery = row["max_recovery_attempts"]
            if max_recovery is None:
                max_recovery = default_max_recovery(row["name"])
            quarantine = recovered and attempts > max_recovery
            values: dict[str, Any] = dict(
                recovery_attempts=attempts,
                max_recovery_attempts=max_recovery,
                lease_epoch=row["lease_epoch"] + 1,
                redispatch_at_ms=None,
                updated_at_ms=now_ms,
                executor=owner,
            )
            if quarantine:
                values.update(
                    status=Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value,
                    lease_owner=None, lease_expires_at_ms=None, completed_at_ms=now_ms,
                )
            else:
                values.update(
                    status=Status.PENDING.value, lease_owner=owner,
                    lease_expires_at_ms=now_ms + lease_ms,
                    started_at_ms=func.coalesce(W.started_at_ms, now_ms),
                )
            won = conn.execute(
                update(workflows)
                .where(
                    W.workflow_id == workflow_id,
                    W.lease_epoch == row["lease_epoch"],
                    W.status == row["status"],
                )
                .values(**values)
            ).rowcount
            if won != 1:
                return None
            step_rows = {} if quarantine else self._steps_of(conn, workflow_id)
        return Claim(
            workflow_id=workflow_id,
            name=row["name"],
            status=values["status"],
            epoch=values["lease_epoch"],
            inputs=row["inputs"],
            recovered=recovered,
            recovery_attempts=attempts,
            max_recovery_attempts=max_recovery,
            queue=row["queue"],
            parent_workflow_id=row["parent_workflow_id"],
            deadline_at_ms=row["deadline_at_ms"],
            last_death=row["last_death"],
            steps=step_rows,
        )

    @staticmethod
    def _steps_of(conn: Connection, workflow_id: str) -> dict[int, dict[str, Any]]:
        result = conn.execute(
            select(steps).where(S.workflow_id == workflow_id).order_by(S.step_id)
        ).mappings()
        return {r["step_id"]: dict(r) for r in result}

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

    # --- checkpoints -------------------------------------------------------

    def _build_fenced_step_upsert(self) -> Any:
        """INSERT the step row only while the execution still holds the lease;
        a RETRYING row may be advanced, a final outcome never replaced."""
        fence = exists().where(
            W.workflow_id == bindparam("fence_workflow_id", type_=String),
            W.lease_epoch == bindparam("fence_epoch", type_=Integer),
            W.status == Status.PENDING.value,
        )
        source = select(*[bindparam(c, type_=_STEP_TYPES[c]) for c in _STEP_COLUMNS]).where(fence)
        stmt = self._insert(steps).from_select(list(_STEP_COLUMNS), source)
        updatable = [c for c in _STEP_COLUMNS if c not in ("workflow_id", "step_id", "started_at_ms")]
        return stmt.on_conflict_do_update(
            index_elements=["workflow_id", "step_id"],
            set_={c: stmt.excluded[c] for c in updatable},
            where=S.status == StepStatus.RETRYING.value,
        ).returning(S.step_id)

    def write_step(
        self, epoch: int, values: dict[str, Any], conn: Connection | None = None
    ) -> bool:
        """Write a step row fenced by the epoch. False: nothing was written
        (lease lost, workflow no longer running, or the outcome already final)."""
        params = {c: values.get(c) for c in _STEP_COLUMNS}
        params.update(fence_workflow_id=values["workflow_id"], fence_epoch=epoch)
        if conn is not None:
            return conn.execute(self._fenced_step_upsert, params).first() is not None
        with self.db.begin() as c:
            return c.execute(self._fenced_step_upsert, params).first() is not None

    def step_row(self, workflow_id: str, step_id: int) -> dict[str, Any] | None:
        with self.db.begin() as conn:
            row = conn.execute(
                select(steps).where(S.workflow_id == workflow_id, S.step_id == step_id)
            ).mappings().first()
            return dict(row) if row else None

    def record_crash(
        self, workflow_id: str, step_id: int, name: str, crash: str, now_ms: int
    ) -> None:
        """Count a lost execution against the step that was in flight."""
        stmt = self._insert(steps).values(
            workflow_id=workflow_id, step_id=step_id, name=name,
            status=StepStatus.RETRYING.value, attempts=0, crashes=1, last_crash=crash,
            started_at_ms=now_ms,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["workflow_id", "step_id"],
            set_={"crashes": S.crashes + 1, "last_crash": crash},
        )
        with self.db.begin() as conn:
            conn.execute(stmt)

    # --- ending and waiting -------------------------------------------------

    def finish(
        self,
        workflow_id: str,
        epoch: int,
        status: Status,
        now_ms: int,
        output: str | None = None,
        error: str | None = None,
    ) -> tuple[bool, str | None]:
        """End the execution's workflow; wake its parent in the same transaction.
        Returns (ended, parent_workflow_id)."""
        with self.db.begin() as conn:
            row = conn.execute(
                update(workflows)
                .where(
                    W.workflow_id == workflow_id,
                    W.lease_epoch == epoch,
                    W.status == Status.PENDING.value,
                )
                .values(
                    status=status.value, output=output, error=error,
                    lease_owner=None, lease_expires_at_ms=None, redispatch_at_ms=None,
                    completed_at_ms=now_ms, updated_at_ms=now_ms,
                )
                .returning(W.parent_workflow_id)
            ).first()
            if row is None:
                return False, None
            parent = row[0]
            if parent:
                self._wake(conn, parent, now_ms)
        return True, parent

    def suspend(
        self, workflow_id: str, epoch: int, wake_at_ms: int | None, now_ms: int
    ) -> int | None | bool:
        """Release the lease and wait until wake_at_ms (None: until woken).
        A wake-up that arrived while we still held the lease is kept, so it
        cannot be lost. Returns the redispatch time, or False if fenced out."""
        current = W.redispatch_at_ms
        if wake_at_ms is None:
            redispatch = current
        else:
            redispatch = case(
                (current.is_(None), wake_at_ms),
                (current < wake_at_ms, current),
                else_=wake_at_ms,
            )
        with self.db.begin() as conn:
            row = conn.execute(
                update(workflows)
                .where(
                    W.workflow_id == workflow_id,
                    W.lease_epoch == epoch,
                    W.status == Status.PENDING.value,
                )
                .values(
                    lease_owner=None, lease_expires_at_ms=None,
                    redispatch_at_ms=redispatch, updated_at_ms=now_ms,
                )
                .returning(W.redispatch_at_ms)
            ).first()
        return False if row is None else row[0]

    def record_quarantine(self, workflow_id: str, epoch: int, error: str, now_ms: int) -> str | None:
        """Store why the claim quarantined the workflow; wake its parent.
        Returns the parent's ID."""
        with self.db.begin() as conn:
            row = conn.execute(
                update(workflows)
                .where(W.workflow_id == workflow_id, W.lease_epoch == epoch)
                .values(error=error, updated_at_ms=now_ms)
                .returning(W.parent_workflow_id)
            ).first()
            parent = row[0] if row else None
            if parent:
                self._wake(conn, parent, now_ms)
        return parent

    @staticmethod
    def _wake(conn: Connection, workflow_id: str, now_ms: int) -> None:
        conn.execute(
            update(workflows)
            .where(W.workflow_id == workflow_id, W.status.in_(ACTIVE_STATUSES))
            .values(redispatch_at_ms=now_ms)
        )

    def wake(self, workflow_id: str, now_ms: int) -> None:
        with self.db.begin() as conn:
            self._wake(conn, workflow_id, now_ms)

    def start_child(
        self, parent_id: str, epoch: int, child_row: dict[str, Any], step_values: dict[str, Any]
    ) -> bool:
        """Create the child and the parent's checkpoint naming it, atomically."""
        with self.db.begin() as conn:
            self.insert_workflow(child_row, conn=conn)
            if not self.write_step(epoch, step_values, conn=conn):
                conn.rollback()
                return False
        return True

    # --- recovery ----------------------------------------------------------

    def due_for_dispatch(
        self, now_ms: int, redelivery_ms: int, limit: int = 500, expired_leases: bool = True
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
        waited = now_ms - W.updated_at_ms
        next_ms = now_ms + case((waited > redelivery_ms, waited), else_=redelivery_ms)
        with self.db.begin() as conn:
            rows = conn.execute(
                update(workflows)
                .where(W.workflow_id.in_(candidates.scalar_subquery()))
                .values(redispatch_at_ms=next_ms)
                .returning(W.workflow_id, W.name, W.queue, W.priority)
            ).mappings().all()
        return [dict(r) for r in rows]

    def expire_deadlines(self, now_ms: int, error: str) -> list[str]:
        """Cancel workflows past their deadline; returns their IDs."""
        with self.db.begin() as conn:
            ids = conn.execute(
                select(W.workflow_id).where(
                    W.status.in_(ACTIVE_STATUSES), W.deadline_at_ms <= now_ms
                )
            ).scalars().all()
        cancelled = []
        for workflow_id in ids:
            cancelled.extend(self.cancel(workflow_id, now_ms, error=error))
        return cancelled

    # --- management --------------------------------------------------------

    def workflow_row(self, workflow_id: str) -> dict[str, Any] | None:
        with self.db.begin() as conn:
            row = conn.execute(
                select(workflows).where(W.workflow_id == workflow_id)
            ).mappings().first()
            return dict(row) if row else None

    def workflow_outcome(self, workflow_id: str) -> dict[str, Any] | None:
        with self.db.begin() as conn:
            row = conn.execute(
                select(W.status, W.output, W.error).where(W.workflow_id == workflow_id)
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
    ) -> list[dict[str, Any]]:
        query = select(workflows)
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
        with self.db.begin() as conn:
            return list(self._steps_of(conn, workflow_id).values())

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

    def delete_workflows(self, workflow_ids: Iterable[str]) -> None:
        ids = list(workflow_ids)
        with self.db.begin() as conn:
            conn.execute(delete(steps).where(S.workflow_id.in_(ids)))
            conn.execute(delete(workflows).where(W.workflow_id.in_(ids)))


def crash_text(death: str | None, step_name: str, attempt: int) -> str:
    return json.dumps({"step": step_name, "attempt": attempt, "cause": death or "unknown"})
