"""The statements of the execution path (store/execution.py), each built
once: the claim of an unleased workflow (and its columns for a row its INSERT claims), a workflow's end (alone, starting
the next link of a chain, or ending the parent that waited for it), its
suspension, a parent's wait on a child; and the text of a recorded crash."""

from __future__ import annotations

import json
from typing import Any, Mapping

from sqlalchemy import BigInteger, Integer, String, Text, bindparam, case, exists, func, or_, select, update
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ExecutableReturnsRows
from sqlalchemy.types import TypeEngine

from ..records import Status
from ..schema import steps, workflows
from .base import S, W

STEP_TYPES: dict[str, type[TypeEngine[Any]]] = {
    "workflow_id": String, "step_id": Integer, "name": String, "status": String,
    "output": Text, "error": Text, "attempt_errors": Text, "attempts": Integer,
    "child_workflow_id": String, "next_attempt_at_ms": BigInteger,
    "started_at_ms": BigInteger, "completed_at_ms": BigInteger, "executor": String,
}


def build_claim_unleased(is_sqlite: bool, *also: ColumnElement[bool]) -> ReturningUpdate[Any]:
    """The claim of an unleased workflow (`also`: further conditions, such as
    its queue's gate)."""
    has_steps = select(S.step_id).where(S.workflow_id == bindparam("wid")).limit(1).exists()
    conditions: list[ColumnElement[bool]] = [
        W.workflow_id == bindparam("wid"),
        # not IN (...): its expanding parameters do not compile ahead of time
        or_(W.status == Status.ENQUEUED.value, W.status == Status.PENDING.value),
        W.lease_owner.is_(None),
        # a delayed start (start_at_ms) waits for its timer
        or_(W.start_at_ms.is_(None), W.start_at_ms <= bindparam("now")),
        *also,
    ]
    if not is_sqlite:
        # This claim's commit need not wait for the disk: Postgres flushes
        # its log in order, so the claim is durable before any write of the
        # execution it starts (each fenced by its epoch) is. Lost in a
        # database crash, it is as if the message came after the restart.
        # set_config(..., true) lasts to the end of this statement's own
        # transaction: no extra round trip.
        conditions.append(func.set_config("synchronous_commit", "off", True).is_not(None))
    return (
        update(workflows)
        .where(*conditions)
        .values(
            status=Status.PENDING.value, lease_owner=bindparam("owner"),
            lease_epoch=W.lease_epoch + 1, lease_expires_at_ms=bindparam("lease_until"),
            redispatch_at_ms=None,
            max_recovery_attempts=func.coalesce(W.max_recovery_attempts, bindparam("default_max")),
            started_at_ms=func.coalesce(W.started_at_ms, bindparam("now")),
            updated_at_ms=bindparam("now"), executor=bindparam("owner"),
            app_version=func.coalesce(bindparam("version", type_=String), W.app_version),
        )
        .returning(
            W.name, W.lease_epoch, W.recovery_attempts, W.max_recovery_attempts, W.inputs,
            W.queue, W.parent_workflow_id, W.deadline_at_ms, W.last_death, W.continuation,
            W.trace_context, has_steps.label("has_steps"),
        )
    )


def claimed_columns(
    row: Mapping[str, Any], owner: str, now_ms: int, lease_ms: int, default_max_recovery: int,
    app_version: str | None,
) -> dict[str, Any]:
    """What the claim of an unleased workflow writes (build_claim_unleased),
    for a new row that its INSERT claims: a chain's next link run by the
    process that ended the link before (runner.py)."""
    max_recovery = row.get("max_recovery_attempts")
    return dict(
        status=Status.PENDING.value, lease_owner=owner, lease_epoch=1,
        lease_expires_at_ms=now_ms + lease_ms, redispatch_at_ms=None,
        max_recovery_attempts=max_recovery if max_recovery is not None else default_max_recovery,
        started_at_ms=now_ms, updated_at_ms=now_ms, executor=owner,
        app_version=app_version or row.get("app_version"),
    )


def _fenced_by_epoch() -> tuple[ColumnElement[bool], ...]:
    return (
        W.workflow_id == bindparam("wid"),
        W.lease_epoch == bindparam("epoch"),
        W.status == Status.PENDING.value,
    )


def build_finish() -> ExecutableReturnsRows:
    return (
        update(workflows)
        .where(*_fenced_by_epoch())
        .values(
            status=bindparam("new_status"), output=bindparam("out"), error=bindparam("err"),
            lease_owner=None, lease_expires_at_ms=None, redispatch_at_ms=None,
            completed_at_ms=bindparam("now"), updated_at_ms=bindparam("now"),
        )
        .returning(W.parent_workflow_id)
    )


def build_finish_then_start(insert: Any, columns: tuple[str, ...]) -> ExecutableReturnsRows:
    """End a link of a static chain and insert the next, in one statement (one
    round trip): the INSERT reads the UPDATE's RETURNING, so a fenced-out
    end inserts nothing."""
    finish: Any = build_finish()
    ended = finish.cte("ended")
    source = select(*[bindparam(f"v_{c}", type_=W[c].type) for c in columns]).where(
        exists(select(ended.c.parent_workflow_id))
    )
    statement: ExecutableReturnsRows = (
        insert(workflows).from_select(list(columns), source)
        .on_conflict_do_nothing(index_elements=["workflow_id"])
        .returning(W.workflow_id)
    )
    return statement


def build_start_waiting_on_child(
    insert: Any, columns: tuple[str, ...], step_columns: tuple[str, ...], child_columns: tuple[str, ...]
) -> ExecutableReturnsRows:
    """The parent's INSERT (nothing if its ID exists), then its checkpoint
    and the child's INSERT only if it was inserted: one round trip."""
    parent = (
        insert(workflows)
        .values({c: bindparam(f"p_{c}", type_=W[c].type) for c in columns})
        .on_conflict_do_nothing(index_elements=["workflow_id"])
        .returning(W.workflow_id)
        .cte("parent")
    )
    checkpoint = (
        insert(steps)
        .from_select(list(step_columns), select(
            *[bindparam(f"s_{c}", type_=STEP_TYPES[c]) for c in step_columns]
        ).where(exists(select(parent.c.workflow_id))))
        .returning(S.step_id)
        .cte("checkpoint")
    )
    statement: ExecutableReturnsRows = (
        insert(workflows)
        .from_select(list(child_columns), select(
            *[bindparam(f"c_{c}", type_=W[c].type) for c in child_columns]
        ).where(exists(select(checkpoint.c.step_id))))
        .returning(W.workflow_id)
    )
    return statement


def end_waiting_parent(parent_id: str, output: str | None, now_ms: int) -> Any:
    """End SUCCESS a parent waiting suspended (not running) with `output`."""
    return (
        update(workflows)
        .where(W.workflow_id == parent_id, W.status == Status.PENDING.value, W.lease_owner.is_(None))
        .values(
            status=Status.SUCCESS.value, output=output, error=None, redispatch_at_ms=None,
            completed_at_ms=now_ms, updated_at_ms=now_ms,
        )
        .returning(W.parent_workflow_id, W.name)
    )


def build_finish_with_parent() -> ExecutableReturnsRows:
    """End the last link of a static chain and, in the same statement, its
    parent (the canvas) when it waits suspended; otherwise wake the parent.
    A parent ended here wakes its own parent instead. `woken`: the
    workflow woken, to publish (None in the common case, a top-level canvas);
    `parent_ended`: the name of the parent ended here, if it was."""
    finish: Any = build_finish()
    ended = finish.cte("ended")
    parent_ended = (
        update(workflows)
        .where(
            W.workflow_id == ended.c.parent_workflow_id,
            W.status == Status.PENDING.value, W.lease_owner.is_(None),
        )
        .values(
            status=Status.SUCCESS.value, output=bindparam("out"), error=None, redispatch_at_ms=None,
            completed_at_ms=bindparam("now"), updated_at_ms=bindparam("now"),
        )
        .returning(W.parent_workflow_id.label("grandparent"), W.name)
        .cte("parent_ended")
    )
    to_wake = func.coalesce(
        select(parent_ended.c.grandparent).scalar_subquery(),
        case((exists(select(parent_ended.c.grandparent)), None), else_=ended.c.parent_workflow_id),
    )
    woken = (
        update(workflows)
        .where(
            W.workflow_id == to_wake,
            or_(W.status == Status.ENQUEUED.value, W.status == Status.PENDING.value),
        )
        .values(redispatch_at_ms=bindparam("now"))
        .returning(W.workflow_id)
        .cte("woken")
    )
    statement: ExecutableReturnsRows = select(
        ended.c.parent_workflow_id, select(woken.c.workflow_id).scalar_subquery().label("woken"),
        select(parent_ended.c.name).scalar_subquery().label("parent_ended"),
    )
    return statement


def build_suspend(waits_for_timer: bool) -> ExecutableReturnsRows:
    current = W.redispatch_at_ms
    redispatch: ColumnElement[Any] = current
    if waits_for_timer:  # the earlier of the timer and a wake-up already there
        wake_at = bindparam("wake_at", type_=BigInteger)
        redispatch = case((current.is_(None), wake_at), (current < wake_at, current), else_=wake_at)
    return (
        update(workflows)
        .where(*_fenced_by_epoch())
        .values(
            lease_owner=None, lease_expires_at_ms=None,
            redispatch_at_ms=redispatch, updated_at_ms=bindparam("now"),
        )
        .returning(W.redispatch_at_ms)
    )


def crash_text(death: str | None, step_name: str, attempt: int) -> str:
    return json.dumps({"step": step_name, "attempt": attempt, "cause": death or "unknown"})
