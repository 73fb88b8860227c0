"""OpenTelemetry spans for a workflow's life: `durable.enqueue <name>` where it
is started, `durable.workflow <name>` for each execution of it, and
`durable.step <name>` for each attempt of a step that runs (a replayed step
is a dictionary look-up, not a span).

Off unless opentelemetry-api is installed (the `otel` extra) and the
application has set a tracer provider; until then every function here
returns at once, and nothing is written.

One trace from the web request that enqueued to the last step: a new
workflow's row stores the context it was started in (`trace_context`, the
W3C traceparent as JSON, written by the row's own INSERT), and every
execution continues from that row, not from the message, so the trace
survives the broker, a suspension, a redelivery and a recovery on another
worker. Children and dispatched steps are started inside their parent's
workflow span, so their rows carry it.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Callable, Iterator, ParamSpec, Protocol, TypeVar

from .context import in_workflow_code

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        Span,
        SpanKind,
        Status,
        StatusCode,
        Tracer,
    )

    INSTALLED = True
except ImportError:  # the `otel` extra is not installed
    INSTALLED = False

TRACER_NAME = "durable"
_OFF: AbstractContextManager[None] = nullcontext()
# the enqueue span open in this context, which names the workflow it started
_enqueuing: contextvars.ContextVar[Any] = contextvars.ContextVar("durable_enqueue_span", default=None)
_tracer_of: tuple[Any, Any] | None = None  # (provider, its tracer), looked up again if the provider changes
# OpenTelemetry loads a provider named in the environment on first use
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


class TracedClaim(Protocol):
    """What the workflow span reads of a claim (store.Claim is one)."""

    @property
    def workflow_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def epoch(self) -> int: ...
    @property
    def recovered(self) -> bool: ...
    @property
    def recovery_attempts(self) -> int: ...
    @property
    def trace_context(self) -> str | None: ...


class TracedEnding(Protocol):
    """How an execution stopped (engine.Ending is one)."""

    @property
    def kind(self) -> str: ...
    @property
    def error(self) -> str | None: ...


E = TypeVar("E", bound=TracedEnding)
P = ParamSpec("P")
R = TypeVar("R")


def _tracer() -> "Tracer | None":
    """Durable's tracer, or None while tracing is off: not installed, or no
    provider set (the API's default records nothing, so it is not called)."""
    if not INSTALLED:
        return None
    global _tracer_of
    if getattr(trace, "_TRACER_PROVIDER", True) is None and not _PROVIDER_FROM_ENV:
        return None  # what get_tracer_provider() finds out, without its look-up in os.environ on every start
    provider = trace.get_tracer_provider()
    if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
        return None
    if _tracer_of is None or _tracer_of[0] is not provider:
        _tracer_of = (provider, provider.get_tracer(TRACER_NAME))
    tracer: Tracer = _tracer_of[1]
    return tracer


def enqueue_span(workflow_name: str, queue: str | None = None) -> AbstractContextManager[object]:
    """The span of a start from outside workflow code (a web request, a
    script, a step). A parent's start of a child is no span: it may be a
    replay, and the child's own spans hang under the parent's workflow span."""
    tracer = _tracer()
    if tracer is None or in_workflow_code() is not None:
        return _OFF
    attributes = {"durable.workflow.name": workflow_name}
    if queue:
        attributes["durable.queue"] = queue
    return _enqueue(tracer, f"durable.enqueue {workflow_name}", attributes)


def enqueue_traced(method: Callable[P, R]) -> Callable[P, R]:
    """`enqueue_span` around a method called as `method(self, workflow_name,
    ..., queue=...)` (DurableClient.enqueue)."""

    @functools.wraps(method)
    def traced(*args: P.args, **kwargs: P.kwargs) -> R:
        name = args[1] if len(args) > 1 else kwargs.get("workflow_name")
        queue = kwargs.get("queue")
        with enqueue_span(str(name), queue if isinstance(queue, str) else None):
            return method(*args, **kwargs)

    return traced


@contextmanager
def _enqueue(tracer: "Tracer", name: str, attributes: dict[str, Any]) -> Iterator[None]:
    with _span(tracer, name, SpanKind.PRODUCER, attributes) as span:
        token = _enqueuing.set(span)
        try:
            yield
        finally:
            _enqueuing.reset(token)


def stamp(row: dict[str, Any]) -> None:
    """Store the current trace context on a new workflow's row (nothing when
    there is none: the row, and its INSERT, stay as without tracing)."""
    if _tracer() is None or not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return
    row["trace_context"] = json.dumps(carrier, separators=(",", ":"))
    span = _enqueuing.get()
    if span is not None and row.get("workflow_id"):
        span.set_attribute("durable.workflow.id", row["workflow_id"])


def run_workflow(claim: TracedClaim, owner: str, run: Callable[[], E]) -> E:
    """Run one execution of a workflow in its span, a child of the context
    its row was started in (a root when it has none)."""
    tracer = _tracer()
    if tracer is None:
        return run()
    attributes = {
        "durable.workflow.id": claim.workflow_id,
        "durable.workflow.name": claim.name,
        "durable.queue": claim.queue,
        "durable.workflow.epoch": claim.epoch,
        "durable.workflow.recovered": claim.recovered,
        "durable.workflow.recovery_attempts": claim.recovery_attempts,
        "durable.worker": owner,
    }
    parent = _started_in(claim.trace_context)
    with _span(tracer, f"durable.workflow {claim.name}", SpanKind.CONSUMER, attributes, parent) as span:
        ending = run()
        span.set_attribute("durable.workflow.ending", ending.kind)
        if ending.kind == "ERROR":
            span.set_status(Status(StatusCode.ERROR, _error_summary(ending.error)))
        return ending


def step_span(workflow_id: str, step_name: str, step_id: int, attempt: int) -> AbstractContextManager[object]:
    """The span of one attempt of a step; a failed attempt records its error."""
    tracer = _tracer()
    if tracer is None:
        return _OFF
    return _span(tracer, f"durable.step {step_name}", SpanKind.INTERNAL, {
        "durable.workflow.id": workflow_id,
        "durable.step.name": step_name,
        "durable.step.id": step_id,
        "durable.step.attempt": attempt,
    })


@contextmanager
def _span(
    tracer: "Tracer", name: str, kind: "SpanKind", attributes: dict[str, Any],
    parent: "otel_context.Context | None" = None,
) -> Iterator["Span"]:
    """A current span that records an Exception as an error. A
    BaseException is durable's control flow (a workflow suspending, an
    execution fenced out), or the process ending: the span just ends."""
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def _started_in(trace_context: str | None) -> "otel_context.Context":
    """The context a workflow's row was started in; an empty one (a new
    trace) when it has none, never whatever is current in the worker."""
    if trace_context:
        try:
            carrier = json.loads(trace_context)
        except ValueError:
            carrier = None
        if isinstance(carrier, dict):
            return propagate.extract(carrier, context=otel_context.Context())
    return otel_context.Context()


def _error_summary(error: str | None) -> str:
    try:
        record = json.loads(error or "")
    except ValueError:
        return "workflow ended ERROR"
    if not isinstance(record, dict):
        return "workflow ended ERROR"
    return f"{record.get('type', 'Error')}: {record.get('message', '')}"[:500]

