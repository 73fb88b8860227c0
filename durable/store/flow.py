"""Flow control in SQL: queue limits, the gate a limited queue's workflow
passes to start, and the wake-up of the next one when a slot frees.

A workflow on a limited queue starts through `claim_gated`, one transaction
that locks the queue's row (so the queue's starts are counted one at a
time), counts what runs, and either claims the workflow or holds it back:
held by a slot, it stays ENQUEUED with no timer and no message, and the end
of a workflow of that queue (or the sweeper, once per sweep and queue) wakes
the next; held by the rate limit, it gets a database timer for the instant a
start leaves the window."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, bindparam, func, select, true, update

from ..limits import QueueLimits
from ..records import Status
from ..schema import queues, workflows
from .base import W
from .execution import Claim, ExecutionSql
from .execution_statements import build_claim_unleased
from .prebuilt import Prebuilt

Q = queues.c

HELD = "held"  # claim_gated's answer for a workflow its queue holds back
NOT_GATED = "not_gated"  # not a first start: the ordinary claim applies

# durable_gate's verdicts (schema.GATE_FUNCTION_SQL); t >= 0 is "held until t"
_START, _HELD_FOR_SLOT, _NOT_GATED, _MISSING, _NOT_DUE = -1, -2, -3, -4, -5


class FlowSql(ExecutionSql):
    def __init__(self, database: Any):
        super().__init__(database)
        running = (
            select(func.count()).where(W.queue == bindparam("queue"), W.status == Status.PENDING.value)
            .scalar_subquery()
        )
        self._queues_stmt = Prebuilt(database, select(queues))
        self._lock_queue_stmt = Prebuilt(
            database, select(queues).where(Q.name == bindparam("queue")).with_for_update()
        )
        here = workflows.alias("here")
        in_queue = (W.queue == bindparam("queue"), W.status == Status.PENDING.value)
        self._gated_row_stmt = Prebuilt(database, select(
            here.c.status, here.c.queue, here.c.partition_key, here.c.start_at_ms, here.c.lease_owner,
            here.c.priority,
            select(func.count()).where(*in_queue).scalar_subquery().label("running"),
            select(func.count()).where(*in_queue, W.partition_key == here.c.partition_key)
            .scalar_subquery().label("running_in_partition"),
        ).where(here.c.workflow_id == bindparam("wid")))
        if not database.is_sqlite:
            self._gate_and_claim_stmt = Prebuilt(database, _build_gate_and_claim())
        self._held_stmt = Prebuilt(database, (
            select(W.workflow_id, W.name, W.queue, W.priority, running.label("running"))
            .where(
                W.queue == bindparam("queue"), W.status == Status.ENQUEUED.value, W.lease_owner.is_(None),
                W.redispatch_at_ms.is_(None),
                (W.start_at_ms.is_(None)) | (W.start_at_ms <= bindparam("now", type_=BigInteger)),
            )
            .order_by(W.priority.desc(), W.created_at_ms)
            .limit(100)
        ))

    def upsert_queue(self, limits: QueueLimits, now_ms: int) -> None:
        values = dict(
            concurrency=limits.concurrency, partition_concurrency=limits.partition_concurrency,
            rate_limit=limits.rate_limit, priority=int(limits.priority), updated_at_ms=now_ms,
        )
        stmt = self._insert(queues).values(name=limits.name, **values)
        with self.db.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))

    def queue_limits(self) -> dict[str, QueueLimits]:
        rows = self._queues_stmt.all({})  # the sweeper asks every second
        return {
            r["name"]: QueueLimits(
                r["name"], r["concurrency"], r["partition_concurrency"], r["rate_limit"], bool(r["priority"])
            )
            for r in rows
        }

    def claim_gated(
        self, workflow_id: str, queue: str, owner: str, now_ms: int, lease_ms: int, default_max_recovery: int,
    ) -> Claim | str | None:
        """The first start of a workflow on a limited queue: its Claim, HELD,
        NOT_GATED (it already started, or is not on this queue), or None (it
        ended, or is not there)."""
        if not self.db.is_sqlite:
            return self._claim_gated_in_one_statement(
                workflow_id, queue, owner, now_ms, lease_ms, default_max_recovery
            )
        with self.db.begin() as conn:
            limits_row = self._lock_queue_stmt.first(dict(queue=queue), conn)
            # read after the lock (a statement of its own, so its snapshot sees
            # every start the lock made us wait for), with the running counts
            row = self._gated_row_stmt.first(dict(queue=queue, wid=workflow_id), conn)
            if row is None:
                return None
            if limits_row is None or row["status"] != Status.ENQUEUED.value or row["queue"] != queue:
                return NOT_GATED
            if row["start_at_ms"] is not None and row["start_at_ms"] > now_ms:
                return HELD  # its timer (redispatch_at_ms) is set already
            limits = QueueLimits(
                queue, limits_row["concurrency"], limits_row["partition_concurrency"],
                limits_row["rate_limit"], bool(limits_row["priority"]),
            )
            wake_at = self._gate(conn, limits, row, now_ms)
            if wake_at is not False:
                conn.execute(
                    update(workflows).where(W.workflow_id == workflow_id, W.status == Status.ENQUEUED.value)
                    .values(redispatch_at_ms=wake_at)
                )
                return HELD
            claimed = self._claim_unleased_stmt.first(dict(
                wid=workflow_id, owner=owner, now=now_ms, lease_until=now_ms + lease_ms,
                default_max=default_max_recovery, version=self.app_version,
            ), conn)
            if claimed is None:
                return NOT_GATED
            return self._unleased_claim(workflow_id, claimed, conn)

    def _claim_gated_in_one_statement(
        self, workflow_id: str, queue: str, owner: str, now_ms: int, lease_ms: int, default_max_recovery: int,
    ) -> Claim | str | None:
        """Postgres: the gate (durable_gate) and the claim in one autocommit
        statement, holding the queue's lock to its end."""
        row = self._gate_and_claim_stmt.first(dict(
            queue=queue, wid=workflow_id, owner=owner, now=now_ms, lease_until=now_ms + lease_ms,
            default_max=default_max_recovery, version=self.app_version,
        ))
        assert row is not None  # the gate's own row is always there
        verdict = row["verdict"]
        if verdict == _MISSING:
            return None
        if verdict == _NOT_GATED:
            return NOT_GATED
        if verdict != _START:
            return HELD
        if row["lease_epoch"] is None:  # passed the gate, yet not claimable (say, leased meanwhile)
            return NOT_GATED
        return self._unleased_claim(workflow_id, row)

    def _gate(self, conn: Any, limits: QueueLimits, row: Any, now_ms: int) -> int | None | bool:
        """False: it may start. Otherwise when to look again: None (when a
        slot frees) or the instant a start leaves the rate window."""
        if limits.concurrency is not None:
            running = row["running"]
            if running >= limits.concurrency:
                return None
            if limits.priority:
                # a higher priority waiting for the same free slots goes first
                ahead = conn.execute(select(func.count()).where(
                    W.queue == limits.name, W.status == Status.ENQUEUED.value,
                    W.priority > row["priority"],
                    (W.start_at_ms.is_(None)) | (W.start_at_ms <= now_ms),
                )).scalar_one()
                if ahead >= limits.concurrency - running:
                    return None
        if limits.partition_concurrency is not None and row["partition_key"] is not None:
            if row["running_in_partition"] >= limits.partition_concurrency:
                return None
        rate = limits.rate
        if rate is not None:
            count, period_ms = rate
            window = conn.execute(
                select(W.started_at_ms).where(W.queue == limits.name, W.started_at_ms > now_ms - period_ms)
                .order_by(W.started_at_ms.desc()).limit(count)
            ).scalars().all()
            if len(window) >= count:
                return int(window[-1]) + period_ms  # the count-th latest start leaves the window then
        return False

    def debounce(self, holder_id: str, row: dict[str, Any], now_ms: int) -> bool:
        """Give a workflow that holds the dedup key and has not started yet
        this start's inputs and start time; False when it has started."""
        with self.db.begin() as conn:
            return conn.execute(
                update(workflows)
                .where(
                    W.workflow_id == holder_id, W.status == Status.ENQUEUED.value,
                    W.lease_owner.is_(None), W.started_at_ms.is_(None),
                )
                .values(
                    inputs=row["inputs"], start_at_ms=row["start_at_ms"],
                    redispatch_at_ms=row["redispatch_at_ms"], updated_at_ms=now_ms,
                )
            ).rowcount == 1

    def held_to_wake(self, queue: str, limits: QueueLimits, now_ms: int) -> list[dict[str, Any]]:
        """Workflows of a limited queue held back for a slot, as many as there
        are free slots, highest priority first, then the oldest. One
        statement on the execution's own connection: it runs at the end of
        every workflow of the queue, and usually finds none."""
        rows = self._held_stmt.all(dict(queue=queue, now=now_ms))
        if not rows or limits.concurrency is None:
            return rows
        free = max(0, limits.concurrency - int(rows[0]["running"]))
        return rows[:free]

    def oldest_enqueued(self) -> dict[str, int]:
        """Per queue, when its oldest enqueued (not started) workflow was created."""
        with self.db.begin() as conn:
            rows = conn.execute(
                select(W.queue, func.min(W.created_at_ms))
                .where(W.status == Status.ENQUEUED.value).group_by(W.queue)
            ).all()
        return {queue: int(created) for queue, created in rows}

    def queue_stats(self) -> list[dict[str, Any]]:
        """Each known queue's limits, running count and backlog."""
        limits = self.queue_limits()
        with self.db.begin() as conn:
            counts = conn.execute(
                select(W.queue, W.status, func.count()).where(
                    W.status.in_((Status.ENQUEUED.value, Status.PENDING.value))
                ).group_by(W.queue, W.status)
            ).all()
        by_queue: dict[str, dict[str, int]] = {}
        for queue, status, count in counts:
            by_queue.setdefault(queue, {})[status] = count
        out = []
        for name in sorted(set(limits) | set(by_queue)):
            q = limits.get(name)
            out.append(dict(
                name=name, concurrency=q.concurrency if q else None,
                partition_concurrency=q.partition_concurrency if q else None,
                rate_limit=q.rate_limit if q else None, priority=bool(q and q.priority),
                running=by_queue.get(name, {}).get(Status.PENDING.value, 0),
                backlog=by_queue.get(name, {}).get(Status.ENQUEUED.value, 0),
            ))
        return out


def _build_gate_and_claim() -> Any:
    """WITH gate (durable_gate's verdict), claimed (the ordinary claim, only
    when the verdict is "start"): the verdict, and the claim's columns or
    NULLs."""
    gate = select(
        func.durable_gate(
            bindparam("queue"), bindparam("wid"), bindparam("now", type_=BigInteger), type_=BigInteger
        ).label("verdict")
    ).cte("gate")
    claimed = build_claim_unleased(False, select(gate.c.verdict).scalar_subquery() == _START).cte("claimed")
    return select(gate.c.verdict, *claimed.c).select_from(gate.outerjoin(claimed, true()))
