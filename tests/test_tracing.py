"""Tracing across processes: a span opened in the test process stands for
the web request; it enqueues a workflow that real Celery workers run on
Postgres and Redis (an inline step retried once, a dispatched step on
another queue, a child workflow, and a step whose process is SIGKILLed and
recovered). Every process exports the spans it ends to one file
(tests/span_files.py); the test reads them back and checks one trace from
the request to the last step, and every parent link.

The test process keeps the tracer provider it sets (OpenTelemetry sets it
once per process); later tests there drop their spans.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
from opentelemetry import trace

from tests import span_files
from tests.harness import Backend, Worker, wait_for


@pytest.fixture
def spans_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spans.jsonl"
    span_files.install(str(path))
    yield path
    span_files.install(None)


def test_one_trace_from_the_request_to_every_step_across_a_recovery(
    pg_backend: Backend, effects_dir: Path, spans_file: Path, tmp_path: Path
) -> None:
    env = pg_backend.env(
        effects_dir, DURABLE_IMPORTS="tests.tracing_workflows", DURABLE_TEST_SPANS_FILE=str(spans_file)
    )
    worker = Worker(env, tmp_path / "worker.log", concurrency=2, queues="celery,traced-steps").start()
    client = pg_backend.client()
    try:
        with trace.get_tracer("web").start_as_current_span("POST /orders") as request_span:
            handle = client.enqueue("traced.order", args=["o-1"])
        result = handle.result(timeout=120)
        wid = handle.workflow_id
        # the recovered execution's span ends just after the result is visible
        spans = wait_for(
            lambda: _if_ended(span_files.read(str(spans_file)), "durable.workflow traced.order", recovered=True),
            30, "the recovered execution's span",
        )
    finally:
        worker.kill_all()
        client.store.db.dispose()
    assert result["fragile"] == "survived" and result["shipped"] == "packed o-1"
    assert handle.status().recovery_attempts == 1

    request = request_span.get_span_context()
    assert {s["trace_id"] for s in spans} == {f"{request.trace_id:032x}"}, "one trace from the request on"

    [enqueue] = named(spans, "durable.enqueue traced.order")
    assert enqueue["parent_id"] == f"{request.span_id:016x}"
    assert enqueue["attributes"]["durable.workflow.id"] == wid

    # every execution of the workflow continues from its row: the enqueue span,
    # whichever process ran it, the recovered one included
    executions = named(spans, "durable.workflow traced.order")
    assert len(executions) >= 3  # to the dispatched step, to the child, the recovery (the killed one never ended)
    assert {e["parent_id"] for e in executions} == {enqueue["span_id"]}
    [recovered] = [e for e in executions if e["attributes"]["durable.workflow.recovered"]]
    assert recovered["attributes"]["durable.workflow.recovery_attempts"] == 1
    assert recovered["attributes"]["durable.workflow.ending"] == "SUCCESS"
    assert recovered["attributes"]["durable.worker"] == f"{socket.gethostname()}:{recovered['pid']}"
    execution_ids = {e["span_id"] for e in executions}

    # inline steps: one span per attempt that ran; replays are no spans
    [reserve] = named(spans, "durable.step traced.reserve")
    assert reserve["parent_id"] in execution_ids
    assert reserve["attributes"]["durable.step.id"] == 0 and reserve["attributes"]["durable.step.attempt"] == 0
    flaky = sorted(named(spans, "durable.step traced.flaky"), key=lambda s: s["attributes"]["durable.step.attempt"])
    assert [s["status"] for s in flaky] == ["ERROR", "UNSET"]
    assert flaky[0]["exception_types"] == ["ConnectionError"]
    assert {s["parent_id"] for s in flaky} <= execution_ids

    # the dispatched step: its own workflow span under the caller's, its step span under that
    [dispatched] = named(spans, "durable.workflow durable.step:traced.charge")
    assert dispatched["parent_id"] in execution_ids
    [charge] = named(spans, "durable.step traced.charge")
    assert charge["parent_id"] == dispatched["span_id"] and charge["pid"] == result["charged_by"]

    # the child workflow, and its step
    [child] = named(spans, "durable.workflow traced.ship")
    assert child["parent_id"] in execution_ids
    [pack] = named(spans, "durable.step traced.pack")
    assert pack["parent_id"] == child["span_id"]

    # the step whose process was killed: only the recovered attempt ended a span
    [fragile] = named(spans, "durable.step traced.fragile")
    assert fragile["parent_id"] == recovered["span_id"]


def named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def _if_ended(spans: list[dict[str, Any]], name: str, recovered: bool) -> list[dict[str, Any]] | None:
    done = any(s["name"] == name and s["attributes"].get("durable.workflow.recovered") is recovered for s in spans)
    return spans if done else None
