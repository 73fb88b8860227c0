"""A step run inside an execution with its retry policy and circuit breaker.

Each failed attempt is recorded (RETRYING, its error, when the next one is
due), so an execution recovered on another worker resumes the count where
the lost one left it; a long back-off suspends the workflow on a database
timer. The step's final error is recorded before it is raised, and a
result or error another execution recorded first is replayed instead.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from . import metrics
from . import serialization as ser
from . import tracing
from .breakers import OPEN, CircuitBreaker
from .context import StepContext, enter_step
from .database import retry_while_unavailable
from .errors import CircuitOpenError, MaxStepRetriesExceededError, SerializationError
from .records import StepStatus
from .retry import RetryPolicy
from .starting import check_payload_size
from .step_protocol import Position, Step, StepHost
from .timeouts import call_with_timeout


def run_step(
    execution: StepHost, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any],
    transactional: bool = False, checkpoint_success: bool = True,
) -> Any:
    """`Execution.run_step`: the step's recorded outcome, or its attempts
    until one succeeds or the policy gives up."""
    position = execution.reserve(step.name)
    if position.final:
        return execution.replay(position.row or {})
    row = position.row
    policy = step.policy
    attempts = row["attempts"] if row else 0
    errors: list[dict[str, Any]] = json.loads(row["attempt_errors"] or "[]") if row else []
    started_ms = (row or {}).get("started_at_ms") or execution.clock.now_ms()
    execution.note_crash(position, attempts)
    if row is not None and row["next_attempt_at_ms"]:
        execution.wait_until(row["next_attempt_at_ms"])
    while True:
        def success(output: str) -> dict[str, Any]:
            return execution.outcome(
                position, StepStatus.SUCCESS, output=output, attempts=attempts + 1,
                attempt_errors=errors, started_at_ms=started_ms,
            )

        existing = None
        attempt_began = time.perf_counter()  # for the metric only: not durable state
        breaker = getattr(step, "circuit", None)
        probe_token = f"{execution.workflow_id}:{position.step_id}:{attempts}"
        try:
            with enter_step(StepContext(position.step_id, step.name, attempts, policy.max_attempts)), \
                    tracing.step_span(execution.workflow_id, step.name, position.step_id, attempts):
                if breaker is not None:
                    _pass_breaker(execution, breaker, probe_token)
                if transactional:
                    result, existing = execution.run_transactional(step, position, args, kwargs, success)
                else:
                    result = call_with_timeout(step.fn, args, kwargs, policy.timeout_seconds)
                    output = ser.dumps(result)
                    check_payload_size(output, execution.settings, f"the result of step {step.name!r}")
        except Exception as exc:
            metrics.STEP_SECONDS.labels(step.name, "error").observe(time.perf_counter() - attempt_began)
            if breaker is not None and not isinstance(exc, CircuitOpenError):
                _report_to_breaker(execution, breaker, probe_token, succeeded=False)
            attempts += 1
            errors.append(_attempt_error(execution, exc, attempts))
            # the step's own say first: an existing Celery task's self.retry() (dispatched_steps.py)
            asked_retry = getattr(step, "retry_after", None)
            asked_delay = asked_retry(exc) if asked_retry is not None else None
            if asked_delay is None and (
                isinstance(exc, SerializationError) or not policy.should_retry(exc, attempts)
            ):
                return _fail_step(execution, position, policy, exc, attempts, errors, started_ms)
            delay = asked_delay if asked_delay is not None else policy.delay_seconds(attempts)
            next_at = execution.clock.now_ms() + int(delay * 1000)
            if isinstance(exc, CircuitOpenError) and exc.open_until_ms:
                next_at = max(next_at, exc.open_until_ms)  # wait for the reset: a timer if long
            existing = execution.record(execution.outcome(
                position, StepStatus.RETRYING, attempts=attempts, attempt_errors=errors,
                next_attempt_at_ms=next_at, started_at_ms=started_ms,
            ))
            if existing is not None:
                return execution.replay(existing)
            execution.wait_until(next_at)
            continue
        metrics.STEP_SECONDS.labels(step.name, "success").observe(time.perf_counter() - attempt_began)
        if breaker is not None:
            _report_to_breaker(execution, breaker, probe_token, succeeded=True)
        if not transactional and not checkpoint_success and row is None and attempts == 0:
            return result  # nothing recorded to overwrite: the step's workflow's end is the checkpoint
        if not transactional:  # outside the try: a failed write is no failed attempt
            existing = execution.record(success(output))
        return result if existing is None else execution.replay(existing)


def _fail_step(
    execution: StepHost, position: Position, policy: RetryPolicy, exc: Exception, attempts: int,
    errors: list[dict[str, Any]], started_ms: int,
) -> Any:
    """Record the step's final error and raise it (or replay what another
    execution recorded first)."""
    # a retried error that ran out of attempts, or one the policy never retries
    retried = policy.retries > 0 and policy.retries_on(exc)
    final: BaseException = MaxStepRetriesExceededError(position.name, attempts, errors) if retried else exc
    existing = execution.record(execution.outcome(
        position, StepStatus.ERROR, error=ser.dumps_error(final), attempts=attempts,
        attempt_errors=errors, started_at_ms=started_ms,
    ))
    if existing is not None:
        return execution.replay(existing)
    raise final


def _pass_breaker(execution: StepHost, breaker: CircuitBreaker, token: str) -> None:
    """Raise CircuitOpenError, without calling the step, while its breaker
    is open (or another attempt is its half-open probe)."""
    verdict, until = _with_database(
        execution, lambda: execution.store.breaker_before(breaker, token, execution.clock.now_ms()),
        "reading a circuit breaker",
    )
    if verdict == OPEN:
        raise CircuitOpenError(breaker.name, until)


def _report_to_breaker(execution: StepHost, breaker: CircuitBreaker, token: str, succeeded: bool) -> None:
    _with_database(
        execution, lambda: execution.store.breaker_after(breaker, token, succeeded, execution.clock.now_ms()),
        "counting for a circuit breaker",
    )


def _with_database(execution: StepHost, operation: Callable[[], Any], what: str) -> Any:
    return retry_while_unavailable(operation, what, clock=execution.clock)


def _attempt_error(execution: StepHost, exc: BaseException, attempt: int) -> dict[str, Any]:
    record = ser.error_to_dict(exc)
    record.pop("args", None)
    record["attempt"] = attempt
    record["at_ms"] = execution.clock.now_ms()
    return record
