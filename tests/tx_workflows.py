"""Workflows for tests/test_transactions.py: @transaction steps writing to an
application table, and a step that kills its own process once."""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update

import durable
from tests.workflows import effects, record
from workers.app import dur

metadata = MetaData()
# No unique constraint on purpose: a second execution of a write shows as extra rows.
tx_rows = Table(
    "tx_rows", metadata,
    Column("row_id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(100), nullable=False),
    Column("n", Integer, nullable=False),
)
counters = Table(
    "tx_counters", metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Integer, nullable=False),
)


@dur.transaction()
def insert_rows(session, key: str, how_many: int) -> int:
    record("insert_rows")
    session.execute(insert(tx_rows), [{"key": key, "n": i} for i in range(how_many)])
    return how_many


@dur.step()
def die_once() -> str:
    """SIGKILL our own process the first time: after the transaction step has
    committed, before the workflow's message is acknowledged."""
    first = not any(kind == "die_once" for kind, _, _ in effects(durable.context().workflow_id))
    record("die_once")
    if first:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@dur.workflow()
def write_then_die(key: str) -> dict:
    written = insert_rows(key, 5)
    return {"written": written, "after": die_once()}


@dur.transaction(retries=3, interval=0.05)
def insert_then_fail_once(session, key: str) -> int:
    record("insert_then_fail_once")
    session.execute(insert(tx_rows), [{"key": key, "n": 0}, {"key": key, "n": 1}])
    if durable.context().attempt == 0:
        raise RuntimeError("failed after writing")
    return 2


@dur.transaction()
def insert_then_fail(session, key: str) -> int:
    session.execute(insert(tx_rows), [{"key": key, "n": 0}])
    raise ValueError(f"bad row for {key}")


@dur.workflow()
def fail_once_workflow(key: str) -> int:
    return insert_then_fail_once(key)


@dur.workflow()
def always_fail_workflow(key: str) -> int:
    return insert_then_fail(key)


@dur.transaction(isolation="SERIALIZABLE")
def slow_increment(session, name: str, pause_seconds: float) -> int:
    """Read, pause, write: two of these at once conflict under SERIALIZABLE."""
    record("slow_increment")
    value = session.execute(select(counters.c.value).where(counters.c.name == name)).scalar_one()
    time.sleep(pause_seconds)
    session.execute(update(counters).where(counters.c.name == name).values(value=value + 1))
    return value + 1


@dur.workflow()
def increment_workflow(name: str, pause_seconds: float) -> int:
    return slow_increment(name, pause_seconds)


@dur.step(retries=2, interval=0.05)
def keyed_step(label: str) -> str:
    """Records its idempotency key each attempt; fails twice, then kills its
    process once, then succeeds."""
    ctx = durable.context()
    runs = [e for e in effects(ctx.workflow_id) if e[0].startswith(f"key:{label}:")]
    record(f"key:{label}:{ctx.idempotency_key}")
    if ctx.attempt < 2:
        raise ConnectionError("try again")
    if len(runs) == 2:  # third run, first at attempt 2: die once
        os.kill(os.getpid(), signal.SIGKILL)
    return ctx.idempotency_key or ""


@dur.workflow()
def idempotency_workflow() -> list:
    return [keyed_step("a"), keyed_step("b")]
