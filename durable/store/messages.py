"""Durable messages and events: every write that sends, consumes or
publishes one, and the wake-up of whoever waits for it.

A workflow's send, recv and set_event each commit together with their step
checkpoint, fenced by the execution's lease epoch: a replay or a zombie
execution can neither send twice nor consume twice. A send wakes its
recipient in the same transaction (`redispatch_at_ms`), so a recipient that
suspends meanwhile keeps the wake-up. `get_event` waiters register in
`durable_event_waiters`; on Postgres a transaction-scoped advisory lock on
(workflow, key) orders a waiter's registration against `set_event`, so one of
the two always sees the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, insert, select, text, update
from sqlalchemy.engine import Connection

from ..records import ACTIVE_STATUSES, Status, StepStatus
from ..schema import event_waiters, events, messages, workflows
from .base import S, StoreBase, W

M = messages.c
E = events.c
EW = event_waiters.c

SET_EVENT_STEP = "durable.set_event"


@dataclass(frozen=True)
class Doorbell:
    """A workflow woken by a write, to be published once the write commits.
    None of these is needed for correctness (the sweeper publishes due
    workflows); they make the wake-up immediate."""

    workflow_id: str
    name: str
    queue: str
    priority: int


class MessagesSql(StoreBase):
    if TYPE_CHECKING:  # from ExecutionSql, beside which `Store` composes this
        def write_step(
            self, epoch: int, values: dict[str, Any], conn: Connection | None = None
        ) -> bool: ...

    # --- messages ----------------------------------------------------------------

    def send_message(
        self,
        row: dict[str, Any],
        now_ms: int,
        epoch: int | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> tuple[str, Doorbell | None]:
        """Store a message for `row["workflow_id"]` and wake that workflow; with
        a checkpoint, write the sender's step row in the same transaction,
        fenced by `epoch`. Returns ("sent", doorbell), ("duplicate", None) when
        a message with this message_id exists already, ("not_found", None),
        or ("unwritten", None) when the checkpoint was fenced out (nothing
        is kept)."""
        with self.db.begin() as conn:
            exists = conn.execute(
                select(W.workflow_id).where(W.workflow_id == row["workflow_id"])
            ).first()
            if exists is None:
                return "not_found", None
            inserted = conn.execute(
                self._insert(messages)
                .values(**row, created_at_ms=now_ms)
                .on_conflict_do_nothing(index_elements=["message_id"])
                .returning(M.seq)
            ).first()
            if checkpoint is not None and not self.write_step(epoch or 0, checkpoint, conn=conn):
                conn.rollback()
                return "unwritten", None
            if inserted is None:
                return "duplicate", None
            return "sent", self._ring(conn, row["workflow_id"], now_ms)

    def receive_message(
        self,
        workflow_id: str,
        topic: str | None,
        epoch: int,
        checkpoint: dict[str, Any],
        now_ms: int,
        timed_out: bool,
    ) -> tuple[str, str | None]:
        """Consume the oldest unconsumed message for (workflow, topic) and write
        the recv checkpoint (its output is the message) in one transaction,
        fenced by `epoch`. With no message and `timed_out`, checkpoint a null
        outcome instead. Returns ("received", payload), ("timed_out", None),
        ("empty", None), or ("unwritten", None) when the fence refused the
        checkpoint (the message stays unconsumed)."""
        with self.db.begin() as conn:
            oldest = (
                select(M.seq, M.payload)
                .where(M.workflow_id == workflow_id, M.topic == topic, M.consumed_at_ms.is_(None))
                .order_by(M.seq)
                .limit(1)
            )
            if not self.db.is_sqlite:
                oldest = oldest.with_for_update(skip_locked=True)
            found = conn.execute(oldest).first()
            if found is None and not timed_out:
                return "empty", None
            payload = None if found is None else found.payload
            if found is not None:
                conn.execute(
                    update(messages)
                    .where(M.seq == found.seq)
                    .values(consumed_at_ms=now_ms, consumed_by_step_id=checkpoint["step_id"])
                )
            values = dict(checkpoint, output=payload if payload is not None else "null")
            if not self.write_step(epoch, values, conn=conn):
                conn.rollback()
                return "unwritten", None
        return ("received", payload) if found is not None else ("timed_out", None)

    def list_messages(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every message sent to a workflow, consumed or not, oldest first."""
        with self.db.begin() as conn:
            rows = conn.execute(
                select(messages).where(M.workflow_id == workflow_id).order_by(M.seq)
            ).mappings()
            return [dict(r) for r in rows]

    # --- events ------------------------------------------------------------------

    def set_event(
        self,
        workflow_id: str,
        key: str,
        value: str,
        epoch: int,
        checkpoint: dict[str, Any],
        now_ms: int,
    ) -> tuple[bool, list[Doorbell]]:
        """Publish (workflow, key) = value with the set_event checkpoint,
        fenced by `epoch`, and wake every workflow waiting for that key.
        Returns (written, doorbells)."""
        with self.db.begin() as conn:
            self._lock_event(conn, workflow_id, key)
            stmt = self._insert(events).values(
                workflow_id=workflow_id, key=key, value=value,
                step_id=checkpoint["step_id"], updated_at_ms=now_ms,
            )
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["workflow_id", "key"],
                set_={"value": value, "step_id": checkpoint["step_id"], "updated_at_ms": now_ms},
            ))
            if not self.write_step(epoch, checkpoint, conn=conn):
                conn.rollback()
                return False, []
            waiters = conn.execute(
                delete(event_waiters)
                .where(EW.target_workflow_id == workflow_id, EW.key == key)
                .returning(EW.waiter_workflow_id)
            ).scalars().all()
            rung = [self._ring(conn, waiter, now_ms) for waiter in waiters]
        return True, [d for d in rung if d is not None]

    def read_event(
        self,
        workflow_id: str,
        key: str,
        waiter_workflow_id: str | None = None,
        wait: bool = False,
        now_ms: int = 0,
    ) -> str | None:
        """The latest value of (workflow, key), or None. A waiting workflow
        (`wait`) that finds nothing registers itself, in the same
        transaction, to be woken by the set_event; one that finds the value,
        or stops waiting, is unregistered."""
        with self.db.begin() as conn:
            if waiter_workflow_id is not None:
                self._lock_event(conn, workflow_id, key)
            value = conn.execute(
                select(E.value).where(E.workflow_id == workflow_id, E.key == key)
            ).scalar()
            if waiter_workflow_id is None:
                return value
            mine = (
                (EW.target_workflow_id == workflow_id)
                & (EW.key == key)
                & (EW.waiter_workflow_id == waiter_workflow_id)
            )
            if value is None and wait:
                conn.execute(
                    self._insert(event_waiters)
                    .values(
                        target_workflow_id=workflow_id, key=key,
                        waiter_workflow_id=waiter_workflow_id, created_at_ms=now_ms,
                    )
                    .on_conflict_do_nothing()
                )
            else:
                conn.execute(delete(event_waiters).where(mine))
            return value

    def list_events(self, workflow_id: str) -> dict[str, str]:
        """The latest serialized value of each event the workflow set."""
        with self.db.begin() as conn:
            rows = conn.execute(select(E.key, E.value).where(E.workflow_id == workflow_id)).all()
        return {key: value for key, value in rows}

    def restore_events(self, workflow_id: str, conn: Connection | None = None) -> int:
        """Rebuild a workflow's events from its own set_event checkpoints (a
        fork's copied steps): each key gets the value its last one set. With
        `conn`, inside that transaction (a fork writes all in one)."""
        if conn is None:
            with self.db.begin() as own:
                return self.restore_events(workflow_id, own)
        rows = conn.execute(
            select(S.step_id, S.output, S.completed_at_ms)
            .where(
                S.workflow_id == workflow_id,
                S.name == SET_EVENT_STEP,
                S.status == StepStatus.SUCCESS.value,
            )
            .order_by(S.step_id)
        ).all()
        latest: dict[str, tuple[int, str, int]] = {}
        for step_id, output, completed_at_ms in rows:
            key, value = _event_of_checkpoint(output)
            latest[key] = (step_id, value, completed_at_ms or 0)
        if latest:
            conn.execute(delete(events).where(E.workflow_id == workflow_id))
            conn.execute(insert(events), [
                dict(workflow_id=workflow_id, key=key, value=value, step_id=step_id,
                     updated_at_ms=at_ms)
                for key, (step_id, value, at_ms) in latest.items()
            ])
        return len(latest)

    # --- shared ------------------------------------------------------------------

    def _ring(self, conn: Connection, workflow_id: str, now_ms: int) -> Doorbell | None:
        """Wake a workflow after a write it waits for; return what to publish
        once the write commits, or None when no message is needed.

        A claimed (PENDING) workflow gets `redispatch_at_ms` = now, as `_wake`
        does: if a live execution holds the lease, it finds the wake-up when
        it suspends and publishes it itself. A not yet claimed (ENQUEUED) one
        is on its way and will see the write; its row is still updated (to
        itself), which makes a claim racing this transaction wait for its
        commit."""
        pending = Status.PENDING.value
        row = conn.execute(
            update(workflows)
            .where(W.workflow_id == workflow_id, W.status.in_(ACTIVE_STATUSES))
            .values(redispatch_at_ms=case((W.status == pending, now_ms), else_=W.redispatch_at_ms))
            .returning(W.status, W.name, W.queue, W.priority, W.lease_owner, W.lease_expires_at_ms)
        ).first()
        if row is None or row.status != pending:
            return None
        if row.lease_owner is not None and (row.lease_expires_at_ms or 0) > now_ms:
            return None
        return Doorbell(workflow_id, row.name, row.queue, row.priority)

    def _lock_event(self, conn: Connection, workflow_id: str, key: str) -> None:
        """Serialize set_event against a waiter's registration on one key. SQLite
        needs nothing: its transactions take the write lock at BEGIN."""
        if self.db.is_sqlite:
            return
        digest = hashlib.blake2b(f"{workflow_id}\x00{key}".encode(), digest_size=8).digest()
        lock_key = int.from_bytes(digest, "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})


def _event_of_checkpoint(output: str) -> tuple[str, str]:
    """A set_event checkpoint's output is {"key": ..., "value": ...} as JSON;
    returns the key and the value re-serialized on its own."""
    record = json.loads(output)
    return record["key"], json.dumps(record["value"], separators=(",", ":"))
