"""What the decorators return: a registered workflow (`start()`,
`.options(...)`) and a registered step (checkpointed inside a workflow, a
plain call elsewhere, or dispatched as a Celery task of its own)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Callable, Generic, TypeVar

from . import sagas, tracing
from .breakers import CircuitBreaker
from .client import Management, WorkflowHandle
from .context import in_workflow_code
from .dispatched_steps import Dispatched
from .inputs import Parameters
from .retry import RetryPolicy
from .starting import StartOptions, new_workflow_row, start_workflow
from .transactions import Transactions

R = TypeVar("R")


class WorkflowFunction(Generic[R]):
    """A registered workflow. Call it to run it inline (no durability), or
    `start()` it to run it durably on a worker."""

    def __init__(self, durable: Management, fn: Callable[..., R], name: str, defaults: StartOptions):
        self.durable = durable
        self.fn = fn
        self.name = name
        self.defaults = defaults
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def options(self, **options: Any) -> "BoundStart[R]":
        return BoundStart(self, replace(self.defaults, **options))

    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        return BoundStart(self, self.defaults).start(*args, **kwargs)

    @functools.cached_property
    def parameters(self) -> Parameters:
        """Its parameters' type hints: start() checks them, workers record
        them for clients that enqueue by name (durable/inputs.py)."""
        return Parameters(self.fn, self.name)

    @property
    def max_recovery_attempts(self) -> int | None:
        return self.defaults.max_recovery_attempts

    @property
    def on_crash_queue(self) -> str | None:
        return None  # a workflow's lost execution is recovered where it was


class BoundStart(Generic[R]):
    def __init__(self, workflow: WorkflowFunction[R], options: StartOptions):
        self.workflow = workflow
        self.opts = options

    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        with tracing.enqueue_span(self.workflow.name, self.opts.queue):
            return self._start(*args, **kwargs)

    def _start(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        durable = self.workflow.durable
        execution = in_workflow_code()
        row = new_workflow_row(
            durable.settings,
            name=self.workflow.name,
            args=args,
            kwargs=kwargs,
            # a child's ID is derived from its parent's history: deterministic
            workflow_id=self.opts.workflow_id or ("" if execution is not None else None),
            queue=self.opts.queue,
            dedup_key=self.opts.dedup_key,
            priority=self.opts.priority,
            timeout_seconds=self.opts.timeout,
            max_recovery_attempts=self.opts.max_recovery_attempts,
            clock=durable.clock,
            partition_key=self.opts.partition_key,
            start_at_ms=self.opts.start_at_ms(durable.clock.now_ms()),
        )
        self.workflow.parameters.check(args, kwargs)  # WorkflowInputError naming the parameter
        if execution is not None:
            return WorkflowHandle(
                execution.start_child(row, self.workflow.name, on_duplicate=self.opts.on_duplicate), durable
            )
        workflow_id = start_workflow(
            durable.store, durable.start_dispatcher, row, self.opts.on_duplicate, durable.clock,
            debounce=self.opts.debounce is not None,
        )
        return WorkflowHandle(workflow_id, durable)


class StepFunction:
    """A registered step: checkpointed when called inside a workflow, a plain
    call elsewhere (and inside another step). A dispatched step (`queue=`)
    runs as its own Celery task on that queue; the workflow waits for it
    suspended (see `dispatched_steps.py`)."""

    def __init__(
        self, fn: Callable[..., Any], name: str, policy: RetryPolicy,
        transactions: Transactions | None = None, isolation: str | None = None,
        dispatched: Dispatched | None = None, compensate: Callable[..., Any] | None = None,
        circuit: CircuitBreaker | None = None,
    ):
        self.fn = fn
        self.name = name
        self.policy = policy
        self.transactions = transactions  # set for a @transaction step
        self.isolation = isolation
        self.dispatched = dispatched
        self.compensate = compensate  # its undo in a saga: compensate(result, *args, **kwargs)
        self.circuit = circuit  # the breaker its attempts pass and count in
        functools.update_wrapper(self, fn)

    @property
    def transactional(self) -> bool:
        return self.transactions is not None

    def spawn(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        """Start a dispatched step and return its handle at once: `result()`
        (or `durable.gather`) waits for it."""
        if self.dispatched is None:
            raise TypeError(
                f"step {self.name!r} runs inline; spawn() needs a dispatched step: @dur.step(queue=...)"
            )
        return self.dispatched.spawn(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._call(args, kwargs)
        sagas.on_step_success(self.compensate, result, args, kwargs)
        return result

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        execution = in_workflow_code()
        if execution is not None:
            if self.dispatched is not None:
                return self.dispatched.spawn(args, kwargs).result()
            return execution.run_step(self, args, kwargs, transactional=self.transactional)
        if self.transactions is not None:
            return self.transactions.run_outside(self, args, kwargs)
        return self.fn(*args, **kwargs)
