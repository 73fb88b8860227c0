"""The execution path: claim a workflow, keep the lease, checkpoint steps,
end or suspend. Every write is fenced by the lease epoch the execution
claimed, so a zombie (a frozen or partitioned worker whose lease was taken
over) cannot overwrite the new owner's results. Step outcomes are keyed by
(workflow_id, step_id): a second writer of the same outcome hits the primary
key and is detected, never silently accepted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sqlalchemy import Integer, String, bindparam, func, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.sql.selectable import ExecutableReturnsRows

from ..database import Database
from ..errors import MaxRecoveryAttemptsExceededError
from ..local_processes import owner_alive_here
from ..serialization import dumps_error
from ..records import ACTIVE_STATUSES, Status, StepStatus
from ..schema import steps, workflows
from .base import S, StoreBase, W
from .execution_statements import (
    STEP_TYPES,
    build_claim_unleased,
    build_finish,
    build_finish_then_start,
    build_finish_with_parent,
    build_start_waiting_on_child,
    build_suspend,
    crash_text,
    end_waiting_parent,
)
from .prebuilt import Prebuilt

logger = logging.getLogger("durable.store")

_STEP_COLUMNS = (
    "workflow_id", "step_id", "name", "status", "output", "error", "attempt_errors",
    "attempts", "child_workflow_id", "next_attempt_at_ms", "started_at_ms", "completed_at_ms", "executor",
)
# isolation levels whose reads all see the transaction's first snapshot
_SNAPSHOT_LEVELS = ("REPEATABLE READ", "SERIALIZABLE")


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
    continuation: str | None = None  # the rest of a static chain (canvas.py)
    trace_context: str | None = None  # where the workflow was started, for its spans (tracing.py)

    @classmethod
    def of(cls, workflow_id: str, row: Mapping[str, Any] | RowMapping, **decided: Any) -> "Claim":
        """The workflow's own columns from its row, the rest as the claim decided."""
        return cls(
            workflow_id=workflow_id, name=row["name"], inputs=row["inputs"], queue=row["queue"],
            parent_workflow_id=row["parent_workflow_id"], deadline_at_ms=row["deadline_at_ms"],
            last_death=row["last_death"], continuation=row.get("continuation"),
            trace_context=row.get("trace_context"), **decided,
        )

    @classmethod
    def of_claimed_row(cls, row: Mapping[str, Any]) -> "Claim":
        """The claim of a new row inserted already claimed (`claimed_columns`)."""
        return cls.of(
            row["workflow_id"], {"last_death": None, **row}, status=Status.PENDING.value,
            epoch=row["lease_epoch"], recovered=False, recovery_attempts=0,
            max_recovery_attempts=row["max_recovery_attempts"], steps={},
        )




class ExecutionSql(StoreBase):
    def __init__(self, database: Database):
        super().__init__(database)
        self._fenced_step_upserts: dict[tuple[frozenset[str], bool], Prebuilt] = {}
        self._claim_unleased_stmt = Prebuilt(database, build_claim_unleased(database.is_sqlite))
        # The code version this process runs (DURABLE_APP_VERSION), written
        # on each workflow an execution of it claims: set by the app.
        self.app_version: str | None = None
        self._finish_stmt = Prebuilt(database, build_finish())
        self._finish_then_start: dict[tuple[str, ...], Prebuilt] = {}
        self._finish_with_parent_stmt = Prebuilt(database, build_finish_with_parent())
        self._start_with_child: dict[tuple[tuple[str, ...], ...], Prebuilt] = {}
        self._suspend_stmts = {
            waits_for_timer: Prebuilt(database, build_suspend(waits_for_timer))
            for waits_for_timer in (False, True)
        }

    def claim(
        self,
        workflow_id: str,
        owner: str,
        now_ms: int,
        lease_ms: int,
        default_max_recovery: Callable[[str], int] = lambda name: 10,
        name_hint: str | None = None,
        owner_alive: Callable[[str, int, int], bool] = owner_alive_here,
    ) -> Claim | None:
        """Take the lease if nobody holds a live one. A previous execution that
        still held a lease was lost: that counts as a recovery, in the same
        transaction; past max_recovery_attempts the workflow is quarantined.

        `name_hint` is the workflow name the message carried (the row's name,
        as published): with it, the common case, an unleased workflow, is
        claimed by one UPDATE ... RETURNING.

        `owner_alive(owner, lease_expires_at_ms, now_ms)` tells whether the
        holder of an expired lease is a process known to be still alive (by
        default: on this host): taking over from it counts no recovery."""
        if name_hint is not None:
            claim = self._claim_unleased(
                workflow_id, owner, now_ms, lease_ms, default_max_recovery(name_hint)
            )
            if claim is not None:
                return claim
        return self._claim_lost_or_none(
            workflow_id, owner, now_ms, lease_ms, default_max_recovery, owner_alive
        )

    def _claim_unleased(
        self, workflow_id: str, owner: str, now_ms: int, lease_ms: int, default_max_recovery: int
    ) -> Claim | None:
        """The claim of a new, suspended or resumed workflow: nobody held it,
        so it is no recovery. One round trip when the workflow has no steps."""
        row = self._claim_unleased_stmt.first(dict(
            wid=workflow_id, owner=owner, now=now_ms, lease_until=now_ms + lease_ms,
            default_max=default_max_recovery, version=self.app_version,
        ))
        return None if row is None else self._unleased_claim(workflow_id, row)

    def _unleased_claim(
        self, workflow_id: str, row: Mapping[str, Any], conn: Connection | None = None
    ) -> Claim:
        """The Claim that the unleased claim's RETURNING row makes (no recovery).
        Nobody else writes this workflow's steps while we hold the lease, so
        reading them after the claim sees what a transaction would."""
        step_rows = self.steps_of(workflow_id, conn) if row["has_steps"] else {}
        return Claim.of(
            workflow_id, row, status=Status.PENDING.value, epoch=row["lease_epoch"],
            recovered=False, recovery_attempts=row["recovery_attempts"],
            max_recovery_attempts=row["max_recovery_attempts"], steps=step_rows,
        )

    def _claim_lost_or_none(
        self,
        workflow_id: str,
        owner: str,
        now_ms: int,
        lease_ms: int,
        default_max_recovery: Callable[[str], int],
        owner_alive: Callable[[str, int, int], bool] = owner_alive_here,
    ) -> Claim | None:
        """The claim of a workflow whose lease expired (its execution was
        lost), or None: ended, missing, or a live execution holds it. A lease
        whose holder is known alive (it froze, or nobody could renew for it)
        is taken over, and fenced out, without counting a recovery."""
        with self.db.begin() as conn:
            row = conn.execute(
                select(
                    W.name, W.status, W.lease_owner, W.lease_epoch, W.lease_expires_at_ms,
                    W.recovery_attempts, W.max_recovery_attempts, W.inputs, W.queue,
                    W.parent_workflow_id, W.deadline_at_ms, W.last_death, W.continuation, W.start_at_ms,
                    W.trace_context,
                ).where(W.workflow_id == workflow_id)
            ).mappings().first()
            if row is None or row["status"] not in ACTIVE_STATUSES:
                return None
            if row["lease_owner"] is None and (row["start_at_ms"] or 0) > now_ms:
                return None  # a delayed start: its timer publishes it
            if row["lease_owner"] is not None and (row["lease_expires_at_ms"] or 0) > now_ms:
                return None  # a live execution holds it
            recovered = row["lease_owner"] is not None
            if recovered and owner_alive(row["lease_owner"], row["lease_expires_at_ms"] or 0, now_ms):
                recovered = False  # nothing crashed: no recovery to count
                logger.warning(
                    "workflow %s: taking over the expired lease of %s, a process still alive "
                    "(frozen, or its lease was not renewed); not counted as a recovery",
                    workflow_id, row["lease_owner"],
                )
            attempts = row["recovery_attempts"] + (1 if recovered else 0)
            max_recovery = row["max_recovery_attempts"]
            if max_recovery is None:
                max_recovery = default_max_recovery(row["name"])
            quarantine = recovered and attempts > max_recovery
            in_flight = None
            if quarantine:
                step_rows = self.steps_of(workflow_id, conn)
                in_flight = next(
                    (r for r in step_rows.values() if r["status"] == StepStatus.RETRYING.value), None
                )
            values: dict[str, Any] = dict(
                recovery_attempts=attempts,
                max_recovery_attempts=max_recovery,
                lease_epoch=row["lease_epoch"] + 1,
                redispatch_at_ms=None,
                updated_at_ms=now_ms,
                executor=owner,
                app_version=func.coalesce(self.app_version, W.app_version),
            )
            if quarantine:
                where = (
                    f"step #{max(step_rows, default=-1) + 1}" if in_flight is None
                    else f"step #{in_flight['step_id']} {in_flight['name']!r}"
                )
                error = MaxRecoveryAttemptsExceededError(
                    f"workflow {workflow_id!r} lost its worker {attempts} times "
                    f"(max_recovery_attempts={max_recovery}); last in {where}: "
                    f"{row['last_death'] or 'lease expired (worker gone without a report)'}"
                )
                values.update(
                    status=Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value, error=dumps_error(error),
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
            if quarantine:
                # all in the claim's transaction: nobody ever sees a
                # quarantined workflow without its error, its last crash
                # uncounted, or its parent not woken
                if in_flight is not None:
                    crash = crash_text(row["last_death"], in_flight["name"], in_flight["attempts"] + 1)
                    conn.execute(self._crash_upsert(workflow_id, in_flight["step_id"], in_flight["name"], crash, now_ms))
                if row["parent_workflow_id"]:
                    self._wake(conn, row["parent_workflow_id"], now_ms)
                step_rows = {}
            else:
                step_rows = self.steps_of(workflow_id, conn)
        return Claim.of(
            workflow_id, row, status=values["status"], epoch=values["lease_epoch"],
            recovered=recovered, recovery_attempts=attempts,
            max_recovery_attempts=max_recovery, steps=step_rows,
        )

    def write_step(
        self, epoch: int, values: dict[str, Any], conn: Connection | None = None
    ) -> bool:
        """Write a step row fenced by the epoch. False: nothing was written
        (lease lost, workflow no longer running, or the outcome already final)."""
        params = {c: values[c] for c in _STEP_COLUMNS if values.get(c) is not None}
        # a caller's REPEATABLE READ or SERIALIZABLE transaction (a
        # @transaction step's) cannot lock the fence: see below
        level = str(conn.get_execution_options().get("isolation_level", "")) if conn is not None else ""
        locked = level.upper().replace("_", " ") not in _SNAPSHOT_LEVELS
        key = (frozenset(params), locked)
        upsert = self._fenced_step_upserts.get(key)
        if upsert is None:
            columns = tuple(c for c in _STEP_COLUMNS if c in params)
            upsert = self._fenced_step_upserts[key] = Prebuilt(
                self.db, self._build_fenced_step_upsert(columns, locked)
            )
        params["fence_epoch"] = epoch
        return upsert.first(params, conn) is not None

    def _build_fenced_step_upsert(self, columns: tuple[str, ...], locked: bool) -> ExecutableReturnsRows:
        """INSERT the step row only while the execution still holds the lease;
        a RETRYING row may be advanced, a final outcome never replaced. One
        statement per set of columns given: a plain success sends 9 values,
        not all 13 (the others are NULL, and so are their `excluded` values).

        `locked`: the fence locks the workflow row it reads (FOR SHARE on
        Postgres) to the end of the write's transaction, in the same
        statement. A takeover that committed after the statement's snapshot
        is then seen (Postgres checks the row's newest version again before
        it locks it), and a takeover that comes later waits until the write
        committed, so the new execution's claim reads it. Read unlocked, the
        row as the snapshot saw it let a zombie's write land after the
        takeover, unseen by the new execution, which would adopt it when it
        came to that step. FOR KEY SHARE would not do: it neither waits for
        nor re-checks an update that changes no key column.

        Not locked inside a REPEATABLE READ or SERIALIZABLE transaction:
        there a lock on a row updated since the snapshot fails, and the
        worker renews the lease (updates the row) every lease_seconds / 3,
        so a transaction longer than that could never commit. Its fence
        reads the snapshot: a zombie's transaction may then commit its
        writes and its outcome together after a takeover, and the new
        execution adopts that outcome (its own writes roll back with its
        refused checkpoint): the step still takes effect once.

        SQLite has no row locks: its one writer at a time serializes the
        write and the takeover already."""
        fence_row = select(W.workflow_id).where(
            W.workflow_id == bindparam("workflow_id", type_=String),
            W.lease_epoch == bindparam("fence_epoch", type_=Integer),
            W.status == Status.PENDING.value,
        )
        if locked and not self.db.is_sqlite:
            fence_row = fence_row.with_for_update(read=True)
        fence = fence_row.exists()
        source = select(*[bindparam(c, type_=STEP_TYPES[c]) for c in columns]).where(fence)
        stmt = self._insert(steps).from_select(list(columns), source)
        updatable = [c for c in _STEP_COLUMNS if c not in ("workflow_id", "step_id", "started_at_ms")]
        if "executor" not in columns:  # a write that names no process keeps the one recorded
            updatable.remove("executor")
        return stmt.on_conflict_do_update(
            index_elements=["workflow_id", "step_id"],
            set_={c: stmt.excluded[c] for c in updatable},
            where=S.status == StepStatus.RETRYING.value,
        ).returning(S.step_id)

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
        with self.db.begin() as conn:
            conn.execute(self._crash_upsert(workflow_id, step_id, name, crash, now_ms))

    def _crash_upsert(self, workflow_id: str, step_id: int, name: str, crash: str, now_ms: int) -> Any:
        stmt = self._insert(steps).values(
            workflow_id=workflow_id, step_id=step_id, name=name,
            status=StepStatus.RETRYING.value, attempts=0, crashes=1, last_crash=crash,
            started_at_ms=now_ms,
        )
        return stmt.on_conflict_do_update(
            index_elements=["workflow_id", "step_id"],
            set_={"crashes": S.crashes + 1, "last_crash": crash},
        )

    def finish(
        self,
        workflow_id: str,
        epoch: int,
        status: Status,
        now_ms: int,
        output: str | None = None,
        error: str | None = None,
        has_parent: bool = True,
        next_row: dict[str, Any] | None = None,
    ) -> tuple[bool, str | None]:
        """End the execution's workflow; wake its parent in the same transaction.
        Returns (ended, parent_workflow_id). Without a parent the end is one
        statement. With `next_row` (the next workflow of a static chain, a
        sibling with the same parent) the end inserts it instead: the parent
        is woken by the chain's last workflow (see `finish_last_link`), or by
        one that fails."""
        params = dict(wid=workflow_id, epoch=epoch, new_status=status.value, out=output,
                      err=error, now=now_ms)
        if next_row is not None and self.db.is_sqlite:  # no UPDATE inside a WITH there
            with self.db.begin() as conn:
                if self._finish_stmt.first(params, conn) is None:
                    return False, None
                self._insert_statement(tuple(sorted(next_row))).first(
                    {f"v_{k}": v for k, v in next_row.items()}, conn
                )
            return True, None
        if next_row is not None:
            columns = tuple(sorted(next_row))
            stmt = self._finish_then_start.get(columns)
            if stmt is None:
                stmt = self._finish_then_start[columns] = Prebuilt(self.db, build_finish_then_start(
                    self._insert, columns
                ))
            started = stmt.first({**params, **{f"v_{k}": v for k, v in next_row.items()}})
            return started is not None, None
        if not has_parent:
            row = self._finish_stmt.first(params)
            if row is None:
                return False, None
            parent = row["parent_workflow_id"]
            if parent:  # the caller was wrong: wake anyway
                self.wake(parent, now_ms)
            return True, parent
        with self.db.begin() as conn:
            row = self._finish_stmt.first(params, conn)
            if row is None:
                return False, None
            parent = row["parent_workflow_id"]
            if parent:
                self._wake(conn, parent, now_ms)
        return True, parent

    def start_waiting_on_child(
        self, row: dict[str, Any], step_values: dict[str, Any], child_row: dict[str, Any]
    ) -> bool:
        """Insert a workflow that starts already waiting on its first child
        (a static chain's canvas and its first link): its row (PENDING,
        unleased, no timer: suspended), its checkpoint naming the child, and
        the child's row, all or nothing, in one statement on Postgres.
        False: a workflow with that ID exists (nothing is written). The
        rows take no dedup key."""
        if self.db.is_sqlite:
            with self.db.begin() as conn:
                if not self.insert_workflow(row, conn=conn).created:
                    return False
                conn.execute(self._insert(steps).values(**step_values))
                self.insert_workflow(child_row, conn=conn)
            return True
        key = (tuple(sorted(row)), tuple(sorted(step_values)), tuple(sorted(child_row)))
        stmt = self._start_with_child.get(key)
        if stmt is None:
            stmt = self._start_with_child[key] = Prebuilt(self.db, build_start_waiting_on_child(self._insert, *key))
        params = {f"p_{k}": v for k, v in row.items()}
        params.update({f"s_{k}": v for k, v in step_values.items()})
        params.update({f"c_{k}": v for k, v in child_row.items()})
        return stmt.first(params) is not None

    def finish_last_link(
        self, workflow_id: str, epoch: int, now_ms: int, output: str
    ) -> tuple[bool, str | None, str | None]:
        """End the last workflow of a static chain SUCCESS; its output is its
        parent's (the canvas's) too. The parent, waiting suspended for it,
        ends SUCCESS in the same statement instead of being woken to replay
        and end, and the parent's own parent, if any, is woken; a parent that
        is running meanwhile is woken instead. Returns (ended, the workflow
        woken: to publish, the name of the parent ended here)."""
        params = dict(wid=workflow_id, epoch=epoch, new_status=Status.SUCCESS.value, out=output,
                      err=None, now=now_ms)
        if not self.db.is_sqlite:
            row = self._finish_with_parent_stmt.first(params)
            if row is None:
                return False, None, None
            return True, row["woken"], row["parent_ended"]
        with self.db.begin() as conn:
            row = self._finish_stmt.first(params, conn)
            if row is None:
                return False, None, None
            woken = parent = row["parent_workflow_id"]
            ended_parent = conn.execute(end_waiting_parent(parent, output, now_ms)).first() if parent else None
            if ended_parent is not None:
                woken = ended_parent.parent_workflow_id
            if woken:
                self._wake(conn, woken, now_ms)
        return True, woken, None if ended_parent is None else ended_parent.name

    def outcomes(self, workflow_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Status, output and error of these workflows (those that exist)."""
        with self.db.begin() as conn:
            rows = conn.execute(
                select(W.workflow_id, W.status, W.output, W.error).where(W.workflow_id.in_(workflow_ids))
            ).mappings().all()
        return {row["workflow_id"]: dict(row) for row in rows}

    def suspend(
        self, workflow_id: str, epoch: int, wake_at_ms: int | None, now_ms: int
    ) -> int | None | bool:
        """Release the lease and wait until wake_at_ms (None: until woken).
        A wake-up that arrived while we still held the lease is kept, so it
        cannot be lost. Returns the redispatch time, or False if fenced out."""
        row = self._suspend_stmts[wake_at_ms is not None].first(
            dict(wid=workflow_id, epoch=epoch, wake_at=wake_at_ms, now=now_ms)
        )
        return False if row is None else row["redispatch_at_ms"]

    def wake(self, workflow_id: str, now_ms: int) -> None:
        with self.db.begin() as conn:
            self._wake(conn, workflow_id, now_ms)

    def start_child(
        self, parent_id: str, epoch: int, child_row: dict[str, Any], step_values: dict[str, Any]
    ) -> bool:
        """Create the child and the parent's checkpoint naming it, atomically.
        False: the checkpoint was fenced out. A dedup key another active
        workflow holds raises DedupConflict naming it; nothing is written."""
        with self.db.begin() as conn:
            self.insert_workflow(child_row, conn=conn)
            if not self.write_step(epoch, step_values, conn=conn):
                conn.rollback()
                return False
        return True
