"""durable/tracing.py in one process: the spans of enqueue, each execution
and each step attempt, with their parent links, kept in memory; and durable
running with OpenTelemetry absent. Across real workers and a SIGKILL:
tests/test_tracing.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, select

from durable import DurableClient, Settings, tracing
from durable.schema import workflows
from tests.harness import REPO

from .conftest import Cluster, SimulatedCrash


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """An SDK provider for this test only (the global one can be set once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", lambda: provider.get_tracer("durable"))
    yield provider, exporter
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_enqueue_executions_and_step_attempts_are_one_trace(cluster: Cluster, provider: Any) -> None:
    sdk, exporter = provider
    dur = cluster.dur
    crashed: list[bool] = []
    failed: list[bool] = []

    @dur.step(name="first")
    def first() -> int:
        return 1

    @dur.step(name="flaky", retries=1, interval=0.0)
    def flaky() -> int:
        if not failed:
            failed.append(True)
            raise ConnectionError("once")
        return 2

    @dur.step(name="fragile")
    def fragile() -> int:
        if not crashed:
            crashed.append(True)
            raise SimulatedCrash()  # the process dies: a recovery runs the workflow again
        return 3

    @dur.workflow(name="traced")
    def traced() -> int:
        return first() + flaky() + fragile()

    with sdk.get_tracer("web").start_as_current_span("GET /") as request:
        handle = traced.start()
    cluster.drive()
    cluster.recover()
    assert handle.result() == 6 and handle.status().recovery_attempts == 1

    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {request.get_span_context().trace_id}
    [enqueue] = by_name(spans, "durable.enqueue traced")
    assert parent_of(enqueue) == request.get_span_context().span_id
    assert enqueue.attributes["durable.workflow.id"] == handle.workflow_id
    # the crashed execution's span ends (a real kill would lose it); both continue from the row
    executions = by_name(spans, "durable.workflow traced")
    assert [e.attributes["durable.workflow.recovered"] for e in executions] == [False, True]
    assert {parent_of(e) for e in executions} == {enqueue.context.span_id}
    assert executions[1].attributes["durable.workflow.ending"] == "SUCCESS"
    assert executions[1].attributes["durable.workflow.epoch"] == 2

    # one span per attempt that ran: the recovery replays first and flaky without spans
    first_run = executions[0].context.span_id
    assert [parent_of(s) for s in by_name(spans, "durable.step first")] == [first_run]
    attempts = by_name(spans, "durable.step flaky")
    assert [s.attributes["durable.step.attempt"] for s in attempts] == [0, 1]
    assert attempts[0].status.status_code.name == "ERROR" and attempts[1].status.status_code.name == "UNSET"
    assert [e.attributes["exception.type"] for e in attempts[0].events] == ["ConnectionError"]
    fragile_spans = by_name(spans, "durable.step fragile")
    assert [parent_of(s) for s in fragile_spans] == [first_run, executions[1].context.span_id]
    assert fragile_spans[0].status.status_code.name == "UNSET"  # a BaseException is no step error


def test_a_failing_workflow_marks_its_span_and_a_child_is_under_its_parent(cluster: Cluster, provider: Any) -> None:
    _, exporter = provider
    dur = cluster.dur

    @dur.workflow(name="kid")
    def kid() -> str:
        raise ValueError("no")

    @dur.workflow(name="parent")
    def parent() -> str:
        return str(kid.start().result())

    handle = parent.start()  # no span around it: the enqueue span is the trace's root
    cluster.drive()
    with pytest.raises(Exception):
        handle.result()
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    assert by_name(spans, "durable.enqueue kid") == []  # a start in workflow code is no enqueue span
    parent_ids = {s.context.span_id for s in by_name(spans, "durable.workflow parent")}
    [child] = by_name(spans, "durable.workflow kid")
    assert parent_of(child) in parent_ids
    assert child.status.status_code.name == "ERROR" and "ValueError: no" in (child.status.description or "")


def test_the_client_carries_the_request_context_sync_async_and_in_a_transaction(
    tmp_path: Path, provider: Any
) -> None:
    sdk, exporter = provider
    url = f"sqlite:///{tmp_path / 'durable.sqlite3'}"
    client = DurableClient(settings=Settings(home=str(tmp_path / "home"), database_url=url))
    app_engine = create_engine(url)
    try:
        with sdk.get_tracer("web").start_as_current_span("POST /") as request:
            client.enqueue("w", workflow_id="sync", allow_unknown=True)
            asyncio.run(client.enqueue_async("w", workflow_id="async", allow_unknown=True))
            with app_engine.begin() as conn:
                client.enqueue("w", workflow_id="in-tx", allow_unknown=True, transaction=conn)
        with client.store.db.engine.connect() as conn:
            stored = dict(conn.execute(select(workflows.c.workflow_id, workflows.c.trace_context)).all())
    finally:
        app_engine.dispose()
        client.store.db.dispose()
    enqueues = {s.attributes["durable.workflow.id"]: s for s in by_name(exporter.get_finished_spans(), "durable.enqueue w")}
    assert set(enqueues) == {"sync", "async", "in-tx"}
    trace_id = f"{request.get_span_context().trace_id:032x}"
    for workflow_id, span in enqueues.items():
        assert parent_of(span) == request.get_span_context().span_id
        # W3C traceparent: version-trace_id-parent_id-flags; the parent is the enqueue span
        assert json.loads(stored[workflow_id])["traceparent"].split("-")[1:3] == [trace_id, f"{span.context.span_id:016x}"]


@pytest.mark.parametrize("installed", [False, True], ids=["not-installed", "no-provider"])
def test_tracing_is_off_without_opentelemetry_or_without_a_provider(tmp_path: Path, installed: bool) -> None:
    """In a fresh interpreter: where `import opentelemetry` fails, and where
    it works but the application set no tracer provider (the API's default
    records nothing). A workflow runs; no span, no stored context."""
    script = textwrap.dedent(f"""
        import sys
        if not {installed!r}:
            sys.modules["opentelemetry"] = None  # ImportError on import, as when it is not installed
        from durable import Durable, Settings, tracing
        from durable.schema import workflows
        from tests.unit.conftest import RecordingDispatcher
        assert tracing.INSTALLED is {installed!r} and tracing._tracer() is None
        dispatcher = RecordingDispatcher()
        dur = Durable(settings=Settings(home={str(tmp_path)!r}, database_url="sqlite:///{tmp_path}/d.sqlite3"),
                      dispatcher=dispatcher)

        @dur.step(name="add")
        def add(a, b):
            return a + b

        @dur.workflow(name="plain")
        def plain():
            return add(1, 2)

        handle = plain.start()
        workflow_id, name = dispatcher.pending.pop()
        assert dur.runner.execute(workflow_id, name) == "executed"
        assert handle.result() == 3
        [step] = dur.list_steps(workflow_id)
        assert step.executor and step.executor.endswith(":" + str(__import__("os").getpid()))
        with dur.store.db.engine.connect() as conn:
            assert conn.execute(workflows.select().with_only_columns(workflows.c.trace_context)).scalar_one() is None
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
