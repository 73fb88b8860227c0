"""Workflows the chaos driver runs in real worker processes.

Every step returns a fresh nonce ("<workflow_id>/<step_id>/<random>") made by
the execution that ran it, and appends one JSON line per run to an
append-only file outside durable's tables (DURABLE_CHAOS_EFFECTS): which
execution (pid, epoch, attempt) ran which step, with which input, and what it
produced. The driver compares these lines with the checkpoint rows: a step's
checkpointed outcome must be one that some execution really produced, and
every later run must have been fed the checkpointed outcome, never another
execution's (a zombie overwriting the new owner would show here).

The @transaction step writes one row to the application table `chaos_tx`
(no unique constraint on purpose: a second commit would show as a second row).

Each line also carries the process's wall clock as durable reads it
(`SYSTEM_CLOCK.now_ms()`, i.e. `time.time()`) next to its monotonic clock:
the driver tells from them how far ahead a worker's clock was (the
`clock_ahead` fault runs workers under libfaketime).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid

from celery.signals import worker_process_init
from sqlalchemy import Column, Integer, MetaData, String, Table, insert

import durable
from durable.clock import SYSTEM_CLOCK
from durable.context import current_execution
from tests.lease_workflows import hold_the_gil
from workers.app import app as celery_app
from workers.app import dur

metadata = MetaData()
chaos_tx = Table(
    "chaos_tx", metadata,
    Column("row_id", Integer, primary_key=True, autoincrement=True),
    Column("workflow_id", String(255), nullable=False),
    Column("step_id", Integer, nullable=False),
    Column("input", String(400), nullable=False),
    Column("nonce", String(400), nullable=False),
)

# Chaos kills a lot of executions; quarantine is not what this suite tests.
MAX_RECOVERY = 200


@worker_process_init.connect
def _join_memory_cgroup(**_kwargs) -> None:
    """Pool children of the memory worker run under a memory cgroup, so a hog
    is OOM-killed by the kernel, as in production."""
    cgroup = os.environ.get("DURABLE_CHAOS_MEMORY_CGROUP")
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    limit_mb = os.environ.get("DURABLE_CHAOS_MEMORY_RLIMIT_MB")
    if limit_mb:
        import resource

        limit = int(limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _nonce() -> str:
    ctx = durable.context()
    return f"{ctx.workflow_id}/{ctx.step_id}/{uuid.uuid4().hex[:12]}"


def _record(kind: str, value_in: str | None, value_out: str | None, **extra: object) -> None:
    ctx = durable.context()
    execution = current_execution()
    line = json.dumps({
        "wf": ctx.workflow_id, "step": ctx.step_id, "name": ctx.step_name, "kind": kind,
        "in": value_in, "out": value_out, "pid": os.getpid(),
        "epoch": execution.epoch if execution else None, "attempt": ctx.attempt,
        "wall_ms": SYSTEM_CLOCK.now_ms(), "mono": time.monotonic(), **extra,
    }, separators=(",", ":")) + "\n"
    path = os.environ.get("DURABLE_CHAOS_EFFECTS", "/tmp/durable-chaos-effects.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one short O_APPEND write: never interleaved
    finally:
        os.close(fd)


def _pause(max_seconds: float) -> None:
    if max_seconds > 0:
        time.sleep(random.random() * max_seconds)


@dur.step()
def chaos_plain(prev: str, pause: float) -> str:
    out = _nonce()
    _pause(pause)
    _record("plain", prev, out)
    return out


@dur.transaction()
def chaos_tx_write(session, prev: str, pause: float) -> str:
    out = _nonce()
    ctx = durable.context()
    session.execute(insert(chaos_tx).values(
        workflow_id=ctx.workflow_id, step_id=ctx.step_id, input=prev, nonce=out,
    ))
    _pause(pause)
    _record("tx", prev, out)  # may be recorded by runs whose commit never happened
    return out


@dur.step(retries=4, interval=0.1, backoff=1.5, retry_on=(ConnectionError,))
def chaos_flaky(prev: str, failures: int) -> str:
    attempt = durable.context().attempt
    if attempt < failures:
        _record("flaky-fail", prev, None)
        raise ConnectionError(f"attempt {attempt} fails on purpose")
    out = _nonce()
    _record("flaky", prev, out)
    return out


@dur.workflow(max_recovery_attempts=MAX_RECOVERY)
def chaos_child(prev: str, pause: float) -> list:
    a = chaos_plain(prev, pause)
    b = chaos_tx_write(a, pause)
    return [a, b]


@dur.workflow(max_recovery_attempts=MAX_RECOVERY)
def chaos_order(plain_steps: int, flaky_failures: int, with_child: bool, pause: float) -> dict:
    chain = []
    prev = "start"
    for _ in range(plain_steps):
        prev = chaos_plain(prev, pause)
        chain.append(prev)
    tx = chaos_tx_write(prev, pause)
    flaky = chaos_flaky(prev, flaky_failures)
    child = chaos_child.start(prev, pause).result() if with_child else None
    return {"chain": chain, "tx": tx, "flaky": flaky, "child": child}


@dur.step()
def chaos_hungry(prev: str, megabytes: int) -> str:
    out = _nonce()
    _record("hungry", prev, out)
    if durable.context().recovery_attempts == 0:
        try:
            hog = b"\x01" * (megabytes * 1024 * 1024)  # written, so really resident
        except MemoryError:
            # under an address-space limit the allocation fails instead of the
            # kernel killing us: die the way the OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)
        return f"survived {len(hog)} bytes"
    return out


@dur.workflow(max_recovery_attempts=MAX_RECOVERY, queue="chaos-memory")
def chaos_hog(megabytes: int) -> list:
    a = chaos_plain("start", 0.0)
    b = chaos_hungry(a, megabytes)
    c = chaos_plain(b, 0.0)
    return [a, b, c]


@dur.step()
def chaos_gil_step(prev: str, seconds: float) -> str:
    """One C call that holds the GIL for `seconds` (3 x the lease and more):
    no thread of this process runs meanwhile, so the lease must be kept by
    the worker's main process."""
    out = _nonce()
    held = hold_the_gil(seconds)
    _record("gil", prev, out, held=round(held, 3))
    return out


@dur.workflow(max_recovery_attempts=MAX_RECOVERY)
def chaos_gil(seconds: float) -> list:
    a = chaos_plain("start", 0.0)
    b = chaos_gil_step(a, seconds)
    c = chaos_plain(b, 0.0)
    return [a, b, c]


@dur.workflow(max_recovery_attempts=MAX_RECOVERY)
def chaos_noop() -> str:
    return "noop"


@celery_app.task(name="chaos.link")
def chaos_link(prev: str, pause: float) -> str:
    """A plain Celery task, a link of a `dur.chain` (each link its own
    workflow, `<chain>-0`, `<chain>-0-1`, ...; its result is the workflow's
    output, no step row). A worker that consumes the next link's queue runs
    it in the delivery of this one."""
    out = _nonce()
    _pause(pause)
    _record("link", prev, out)
    return out
