"""Workflows the integration tests run in real worker processes.

Side effects are counted outside durable's tables: each step appends a line
`<workflow_id> <step> <pid>` to a file in DURABLE_TEST_EFFECTS_DIR (appends
of one short line are atomic), so a test can tell which process ran which
step and how often.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import durable
from workers.app import dur



def effects_dir() -> Path:
    return Path(os.environ.get("DURABLE_TEST_EFFECTS_DIR", "/tmp/durable-effects"))


def record(kind: str) -> None:
    ctx = durable.context()
    effects_dir().mkdir(parents=True, exist_ok=True)
    with open(effects_dir() / f"{ctx.workflow_id}.log", "a") as f:
        f.write(f"{ctx.workflow_id} {kind} {os.getpid()} {ctx.attempt}\n")


def effects(workflow_id: str) -> list[tuple[str, int, int]]:
    """(step, pid, attempt) for every recorded side effect of a workflow."""
    path = effects_dir() / f"{workflow_id}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        _, kind, pid, attempt = line.split()
        out.append((kind, int(pid), int(attempt) if attempt != "None" else -1))
    return out


@dur.step()
def numbered_step(i: int, pause_seconds: float) -> int:
    first_run = not any(kind == f"step{i}" for kind, _, _ in effects(durable.context().workflow_id))
    record(f"step{i}")
    if pause_seconds and first_run:  # only the first run pauses: a re-run after a kill is quick
        time.sleep(pause_seconds)
    return i * i


@dur.workflow()
def ten_steps(pause_seconds: float = 0.0, slow_step: int = -1) -> dict:
    """Ten steps; `slow_step` pauses long enough for a test to kill its process."""
    results = []
    for i in range(1, 11):
        results.append(numbered_step(i, pause_seconds if i == slow_step else 0.0))
    return {"sum": sum(results), "squares": results}


@dur.workflow()
def fails(message: str) -> None:
    raise ValueError(message)


@dur.step()
def slow_echo(value: str, seconds: float) -> str:
    record("slow_echo")
    time.sleep(seconds)
    return value


@dur.workflow()
def slow_workflow(value: str, seconds: float) -> str:
    return slow_echo(value, seconds)


@dur.workflow()
def await_child_with_timeout(child_seconds: float, timeout: float) -> dict:
    """Waits for a child at most `timeout` seconds (suspended meanwhile)."""
    child = slow_workflow.start("done", child_seconds)
    try:
        return {"child": child.workflow_id, "result": child.result(timeout=timeout)}
    except TimeoutError as exc:
        return {"child": child.workflow_id, "result": "timed out", "error": str(exc)}


@dur.workflow()
def await_other(workflow_id: str) -> str:
    """Waits for a workflow that is not its child (nothing wakes it when that ends)."""
    return dur.handle(workflow_id).result()
