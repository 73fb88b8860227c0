"""Finished OpenTelemetry spans as JSON lines in a file (tests/test_tracing.py).

The test process and its workers each install an SDK tracer provider whose
exporter appends every span to `sink.path` the moment the span ends
(SimpleSpanProcessor: in the process that ended it, no thread, so it works
in prefork children). One line per write, opened with O_APPEND: the
processes' lines never interleave. With no path set, spans are dropped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


@dataclass
class Sink:
    path: str | None = None


sink = Sink()
_installed: list[TracerProvider] = []


def record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
        "exception_types": [
            (event.attributes or {}).get("exception.type") for event in span.events if event.name == "exception"
        ],
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if sink.path is None:
            return SpanExportResult.SUCCESS
        lines = "".join(json.dumps(record(span), default=str) + "\n" for span in spans)
        fd = os.open(sink.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS


def install(path: str | None) -> None:
    """Point the sink at `path`; the first call in a process sets the global
    tracer provider (OpenTelemetry lets a process set it once)."""
    sink.path = path
    if not _installed:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter()))
        trace.set_tracer_provider(provider)
        _installed.append(provider)


def read(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
