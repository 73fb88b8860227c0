"""`Durable`: the decorators that make workflows, steps and transactions."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import weakref
from typing import Any, Callable, TypeVar, overload

from celery import Celery
from celery.canvas import chain as celery_chain, chord as celery_chord, group as celery_group

from . import celery_binding
from .breakers import CircuitBreaker
from .canvas import CANVAS_WORKFLOW, Canvas, CanvasRunner, ChainContinuations, describe, signatures
from .client import Management, WorkflowHandle
from .clock import SYSTEM_CLOCK, Clock
from .database import Database
from .background_publish import BackgroundDispatcher
from .dispatch import TASK_PREFIX, CeleryDispatcher, Dispatcher, configure_app
from .dispatched_steps import Dispatched, StepAsWorkflow, TaskStep, step_workflow_name, task_workflow_name
from .engine import Collaborators
from .flow_admin import OperatorCalls
from .functions import StepFunction, WorkflowFunction
from .limits import QueueLimits
from .messaging import Messaging
from .retry import RetryPolicy
from .runner import Runner
from .schedules import Schedule, seconds_to_ms
from .settings import Settings
from .starting import StartOptions, check_name
from .store import Store
from .store.db_clock import database_clock
from .transactions import Transactions, check_transaction_signature, load_orm

logger = logging.getLogger("durable")

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

# Every live Durable app: module-level helpers called outside a workflow
# (durable.send, durable.get_event) use the only one there is.
_apps: "weakref.WeakSet[Durable]" = weakref.WeakSet()


def known_apps() -> list["Durable"]:
    return list(_apps)


class Registry(dict[str, Any]):
    """Registered workflows by name. An existing Celery task run as a step
    by a canvas (`durable.task:<task>`) is found here without having been
    made a step by hand."""

    def __init__(self, durable: "Durable"):
        super().__init__()
        self._durable = weakref.ref(durable)

    def get(self, name: str, default: Any = None) -> Any:
        found = super().get(name)
        if found is None and name.startswith(TASK_PREFIX):
            durable = self._durable()
            task = durable.celery.tasks.get(name[len(TASK_PREFIX):]) if durable else None
            if durable is not None and task is not None:
                durable.task_step(task)
                found = super().get(name)
        return default if found is None else found


class Durable(OperatorCalls, Management):
    """Durable workflows on a Celery app.

    `Durable()` with no arguments reads DURABLE_* from the environment and,
    with nothing set, runs on the embedded default (SQLite + filesystem broker).
    """

    def __init__(
        self,
        celery_app: Celery | None = None,
        database_url: str | None = None,
        broker_url: str | None = None,
        app_database_url: str | None = None,
        settings: Settings | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        dispatcher: Dispatcher | None = None,
        **overrides: Any,
    ):
        """`clock` and `dispatcher` are for tests: a clock they drive, and a
        dispatcher that records what would be published."""
        base = settings or Settings.from_env()
        self.settings = base.with_overrides(
            database_url=database_url, broker_url=broker_url, app_database_url=app_database_url, **overrides
        )
        if celery_app is None:
            celery_app = Celery("durable", broker=self.settings.resolved_broker_url)
        self.celery = configure_app(celery_app, self.settings)
        store = Store(Database(
            self.settings.resolved_database_url, echo=self.settings.sql_echo,
            auto_migrate=self.settings.auto_migrate,
            migration_lock_timeout_seconds=self.settings.migration_lock_timeout_seconds,
        ))
        store.app_version = self.settings.app_version or None  # recorded by each execution's claim
        if clock is SYSTEM_CLOCK:  # a test hands its own clock
            clock = database_clock(store.db)  # leases and timers on the database's clock
        super().__init__(store, dispatcher or CeleryDispatcher(self.celery), self.settings, clock)
        if dispatcher is None:  # a test's recording dispatcher sees each start's publish at once
            self.start_dispatcher = BackgroundDispatcher(self.dispatcher)  # start() returns at its commit
        self.registry = Registry(self)
        self.transactions = Transactions(self.settings, store.db, clock)
        collaborators = Collaborators(
            store=store, dispatcher=self.dispatcher, settings=self.settings, clock=clock,
            transactions=self.transactions, messaging=Messaging(),
            continuations=ChainContinuations(self, self.celery),
        )
        self.queues: dict[str, QueueLimits] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.schedules: dict[str, Schedule] = {}
        self.runner = Runner(
            collaborators, self.registry, declared_queues=self.queues, declared_schedules=self.schedules,
            declared_breakers=self.breakers,
        )
        self._canvas_workflow: WorkflowFunction[Any] = self.workflow(name=CANVAS_WORKFLOW)(
            CanvasRunner(self, self.celery, lambda: self._canvas_workflow)
        )
        celery_binding.bind(self.celery, self.runner)
        _apps.add(self)

    @overload
    def workflow(self, fn: Callable[..., R], /) -> WorkflowFunction[R]: ...

    @overload
    def workflow(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        max_recovery_attempts: int | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Callable[[Callable[..., R]], WorkflowFunction[R]]: ...

    def workflow(
        self,
        fn: Callable[..., R] | None = None,
        *,
        name: str | None = None,
        max_recovery_attempts: int | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> WorkflowFunction[R] | Callable[[Callable[..., R]], WorkflowFunction[R]]:
        def register(f: Callable[..., R]) -> WorkflowFunction[R]:
            if not callable(f):
                raise TypeError(f"@workflow needs a function, got {f!r}")
            wf_name = name or f.__qualname__
            check_name(wf_name, "workflow name")
            defaults = StartOptions(
                queue=queue, priority=priority, timeout=timeout,
                max_recovery_attempts=max_recovery_attempts,
            )
            existing = self.registry.get(wf_name)
            if existing is not None and existing.fn.__module__ != f.__module__:
                raise ValueError(
                    f"a workflow named {wf_name!r} is already registered from {existing.fn.__module__}; "
                    "pass name=... to tell them apart"
                )
            workflow = WorkflowFunction(self, f, wf_name, defaults)
            self.registry[wf_name] = workflow
            return workflow

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[..., Any], /) -> StepFunction: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 3600.0,
        jitter: bool = False,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        dont_retry_on: tuple[type[BaseException], ...] = (),
        queue: str | None = None,
        on_crash_queue: str | None = None,
        max_recovery_attempts: int | None = None,
        compensate: Callable[..., Any] | None = None,
        circuit: str | None = None,
    ) -> Callable[[Callable[..., Any]], StepFunction]: ...

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 3600.0,
        jitter: bool = False,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        dont_retry_on: tuple[type[BaseException], ...] = (),
        queue: str | None = None,
        on_crash_queue: str | None = None,
        max_recovery_attempts: int | None = None,
        compensate: Callable[..., Any] | None = None,
        circuit: str | None = None,
    ) -> StepFunction | Callable[[Callable[..., Any]], StepFunction]:
        """A checkpointed step. With `queue`, a dispatched step: it runs as its
        own Celery task (`durable.step:<name>`) on that queue; after its process
        dies the next attempt goes to `on_crash_queue`; past
        `max_recovery_attempts` lost attempts it fails with
        MaxRecoveryAttemptsExceededError inside the workflow."""
        policy = RetryPolicy(
            retries=retries, interval_seconds=interval, backoff=backoff,
            max_interval_seconds=max_interval, jitter=jitter, timeout_seconds=timeout,
            retry_on=_exception_tuple(retry_on, "retry_on"),
            dont_retry_on=_exception_tuple(dont_retry_on, "dont_retry_on"),
        )
        if queue is None and (on_crash_queue is not None or max_recovery_attempts is not None):
            raise ValueError(
                "on_crash_queue and max_recovery_attempts apply to a dispatched step: give it queue=... "
                "(an inline step's crashes count against its workflow)"
            )

        def register(f: Callable[..., Any]) -> StepFunction:
            if not callable(f):
                raise TypeError(f"@step needs a function, got {f!r}")
            step_name = name or f.__qualname__
            check_name(step_name, "step name")
            if compensate is not None and not callable(compensate):
                raise TypeError(f"compensate must be a function, got {compensate!r}")
            breaker = None
            if circuit is not None:
                breaker = self.breakers.get(circuit)
                if breaker is None:
                    raise ValueError(
                        f"no circuit breaker named {circuit!r}: declare it first with dur.circuit_breaker({circuit!r}, ...)"
                    )
            if queue is None:
                return StepFunction(f, step_name, policy, compensate=compensate, circuit=breaker)
            dispatched = Dispatched(
                self, self.celery, step_workflow_name(step_name), queue, on_crash_queue,
                max_recovery_attempts,
            )
            step = StepFunction(f, step_name, policy, dispatched=dispatched, compensate=compensate, circuit=breaker)
            self._register_dispatched(step, dispatched)
            return step

        return register(fn) if fn is not None else register

    def task_step(
        self,
        task: Any,
        *,
        queue: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 3600.0,
        jitter: bool = False,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        dont_retry_on: tuple[type[BaseException], ...] = (),
        on_crash_queue: str | None = None,
        max_recovery_attempts: int | None = None,
    ) -> TaskStep:
        """An existing Celery task as a durable step, the task unchanged: it
        runs as a Celery task on the queue Celery's routing gives it (or
        `queue`), with its own time and rate limits; its result is
        checkpointed before its message is acknowledged."""
        task_name = getattr(task, "name", None)
        if not isinstance(task_name, str) or not callable(getattr(task, "run", None)):
            raise TypeError(f"task_step needs a Celery task (@app.task), got {task!r}")
        policy = RetryPolicy(
            retries=retries, interval_seconds=interval, backoff=backoff,
            max_interval_seconds=max_interval, jitter=jitter,
            retry_on=_exception_tuple(retry_on, "retry_on"),
            dont_retry_on=_exception_tuple(dont_retry_on, "dont_retry_on"),
        )
        dispatched = Dispatched(
            self, self.celery, task_workflow_name(task_name), queue, on_crash_queue,
            max_recovery_attempts, celery_task_name=task_name,
        )
        step = TaskStep(task, dispatched, policy)
        self._register_dispatched(step, dispatched, like=task)
        return step

    def _register_dispatched(self, step: Any, dispatched: Dispatched, like: Any = None) -> None:
        """The step's own workflow, and the Celery task that carries its messages."""
        self.registry[dispatched.workflow_name] = StepAsWorkflow(
            step, dispatched.max_recovery_attempts, dispatched.on_crash_queue
        )
        celery_binding.bind_step_task(self.celery, dispatched.workflow_name, like=like)

    @overload
    def transaction(self, fn: Callable[..., Any], /) -> StepFunction: ...

    @overload
    def transaction(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        isolation: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 3600.0,
    ) -> Callable[[Callable[..., Any]], StepFunction]: ...

    def transaction(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        isolation: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 3600.0,
    ) -> StepFunction | Callable[[Callable[..., Any]], StepFunction]:
        """An exactly-once database write: the function's first parameter
        receives a SQLAlchemy Session; its writes and the step's checkpoint
        commit in one transaction."""
        policy = RetryPolicy(
            retries=retries, interval_seconds=interval, backoff=backoff, max_interval_seconds=max_interval,
        )

        def register(f: Callable[..., Any]) -> StepFunction:
            check_transaction_signature(f)
            check_name(name or f.__qualname__, "step name")
            load_orm()  # here, in a worker's main process, not in each pool child
            return StepFunction(
                f, name or f.__qualname__, policy, transactions=self.transactions, isolation=isolation
            )

        return register(fn) if fn is not None else register

    # --- flow control and time ------------------------------------------------------

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate_limit: str | None = None,
        partition_concurrency: int | None = None,
        priority: bool = False,
    ) -> QueueLimits:
        """Limits of a queue, enforced in the database across every worker
        and host: at most `concurrency` of its workflows started and not
        ended (a suspended one keeps its slot), at most `partition_concurrency`
        per `partition_key`, at most `rate_limit` starts ("10/s", "100/m",
        "1000/h") in any window of the period; `priority=True`: higher
        priorities start first. Written to the database at worker start."""
        check_name(name, "queue")
        limits = QueueLimits(name, concurrency, partition_concurrency, rate_limit, priority)
        self.queues[name] = limits
        return limits

    def scheduled(
        self,
        *,
        name: str,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        missed: str = "run_latest",
        timezone: str = "UTC",
        queue: str | None = None,
    ) -> Callable[[Callable[..., R]], WorkflowFunction[R]]:
        """A workflow started on a schedule, with the tick's instant (an aware
        datetime) as its argument: `cron` (five fields, in `timezone`) or
        `every` (seconds or a timedelta; ticks aligned to the epoch). Each
        tick runs once, whatever the number of workers; ticks missed while
        no worker ran: "skip", "run_latest" or "run_all"."""
        check_name(name, "schedule name")
        schedule = Schedule(
            name, name, cron=cron, every_ms=None if every is None else seconds_to_ms(every),
            timezone=timezone, missed=missed, queue=queue,
        )

        def register(f: Callable[..., R]) -> WorkflowFunction[R]:
            workflow = self.workflow(name=name, queue=queue)(f)
            self.schedules[name] = schedule
            return workflow

        return register

    def circuit_breaker(
        self, name: str, failure_threshold: int = 5, window: float = 60.0, reset_timeout: float = 30.0
    ) -> CircuitBreaker:
        """A breaker shared by every worker and host: `failure_threshold`
        failed attempts of steps bound to it (`@dur.step(circuit=name)`)
        within `window` seconds open it for `reset_timeout` seconds, then one
        probe attempt decides. Written to the database on first use."""
        check_name(name, "circuit breaker name")
        breaker = CircuitBreaker.of(name, failure_threshold, window, reset_timeout)
        self.breakers[name] = breaker
        return breaker

    def trigger_schedule(self, name: str) -> WorkflowHandle:
        """Run a schedule's tick now (its ID: the schedule's name and this instant)."""
        return WorkflowHandle(self._flow_admin().trigger_schedule(name), self)

    # --- existing Celery canvases, made durable ---------------------------------

    def chain(self, *signatures: Any) -> Canvas:
        """`chain(a.s(...), b.s(), c.si(...))`: each task a dispatched step,
        each result passed on as Celery does; `.start(...)` runs it durably."""
        return Canvas(
            self._canvas_workflow, describe(celery_chain(*self._checked(signatures)), self.celery), self, self.celery
        )

    def group(self, *signatures: Any) -> Canvas:
        """The tasks side by side; the result is the list of their results."""
        return Canvas(self._canvas_workflow, describe(celery_group(*self._checked(signatures)), self.celery))

    def chord(self, header: Any, body: Any) -> Canvas:
        """A group, then `body` called with the list of its results."""
        [body_sig] = self._checked([body])
        header_sigs = self._checked(header if isinstance(header, (list, tuple)) else [header])
        return Canvas(self._canvas_workflow, describe(celery_chord(header_sigs, body_sig), self.celery))

    def _checked(self, items: Any) -> list[Any]:
        return signatures(items, self.celery)

    def migrate(self) -> str:
        return self.store.db.migrate()


def _exception_tuple(value: Any, what: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if not (inspect.isclass(item) and issubclass(item, BaseException)):
            raise TypeError(f"{what} must be exception classes, got {item!r}")
    return tuple(items)
