"""`Durable`: the decorators that make workflows, steps and transactions."""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from dataclasses import replace
from typing import Any, Callable, Generic, TypeVar, overload

from celery import Celery

from . import celery_binding
from .client import Management, WorkflowHandle
from .clock import SYSTEM_CLOCK, Clock
from .context import in_workflow_code
from .database import Database
from .dispatch import CeleryDispatcher, Dispatcher, configure_app
from .engine import Collaborators
from .messaging import Messaging
from .retry import RetryPolicy
from .runner import Runner
from .settings import Settings
from .starting import StartOptions, check_name, new_workflow_row, start_workflow
from .store import Store
from .transactions import Transactions, check_transaction_signature

logger = logging.getLogger("durable")

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

# Every live Durable app: module-level helpers called outside a workflow
# (durable.send, durable.get_event) use the only one there is.
_apps: "weakref.WeakSet[Durable]" = weakref.WeakSet()


def known_apps() -> list["Durable"]:
    return list(_apps)


class WorkflowFunction(Generic[R]):
    """A registered workflow. Call it to run it inline (no durability), or
    `start()` it to run it durably on a worker."""

    def __init__(self, durable: "Durable", fn: Callable[..., R], name: str, defaults: StartOptions):
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

    @property
    def max_recovery_attempts(self) -> int | None:
        return self.defaults.max_recovery_attempts


class BoundStart(Generic[R]):
    def __init__(self, workflow: WorkflowFunction[R], options: StartOptions):
        self.workflow = workflow
        self.opts = options

    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
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
        )
        if execution is not None:
            return WorkflowHandle(execution.start_child(row, self.workflow.name), durable)
        workflow_id = start_workflow(
            durable.store, durable.dispatcher, row, self.opts.on_duplicate, durable.clock
        )
        return WorkflowHandle(workflow_id, durable)


class StepFunction:
    """A registered step: checkpointed when called inside a workflow, a plain
    call elsewhere (and inside another step)."""

    def __init__(
        self, fn: Callable[..., Any], name: str, policy: RetryPolicy,
        transactions: Transactions | None = None, isolation: str | None = None,
    ):
        self.fn = fn
        self.name = name
        self.policy = policy
        self.transactions = transactions  # set for a @transaction step
        self.isolation = isolation
        functools.update_wrapper(self, fn)

    @property
    def transactional(self) -> bool:
        return self.transactions is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        execution = in_workflow_code()
        if execution is not None:
            return execution.run_step(self, args, kwargs, transactional=self.transactional)
        if self.transactions is not None:
            return self.transactions.run_outside(self, args, kwargs)
        return self.fn(*args, **kwargs)


class Durable(Management):
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
        store = Store(Database(self.settings.resolved_database_url, echo=self.settings.sql_echo))
        super().__init__(store, dispatcher or CeleryDispatcher(self.celery), self.settings, clock)
        self.registry: dict[str, WorkflowFunction[Any]] = {}
        self.transactions = Transactions(self.settings, store.db, clock)
        collaborators = Collaborators(
            store=store, dispatcher=self.dispatcher, settings=self.settings, clock=clock,
            transactions=self.transactions, messaging=Messaging(),
        )
        self.runner = Runner(collaborators, self.registry)
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
    ) -> StepFunction | Callable[[Callable[..., Any]], StepFunction]:
        policy = RetryPolicy(
            retries=retries, interval_seconds=interval, backoff=backoff,
            max_interval_seconds=max_interval, jitter=jitter, timeout_seconds=timeout,
            retry_on=_exception_tuple(retry_on, "retry_on"),
            dont_retry_on=_exception_tuple(dont_retry_on, "dont_retry_on"),
        )

        def register(f: Callable[..., Any]) -> StepFunction:
            if not callable(f):
                raise TypeError(f"@step needs a function, got {f!r}")
            check_name(name or f.__qualname__, "step name")
            return StepFunction(f, name or f.__qualname__, policy)

        return register(fn) if fn is not None else register

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
            return StepFunction(
                f, name or f.__qualname__, policy, transactions=self.transactions, isolation=isolation
            )

        return register(fn) if fn is not None else register

    def migrate(self) -> str:
        return self.store.db.migrate()


def _exception_tuple(value: Any, what: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if not (inspect.isclass(item) and issubclass(item, BaseException)):
            raise TypeError(f"{what} must be exception classes, got {item!r}")
    return tuple(items)
