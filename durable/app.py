"""`Durable`: the decorators that make workflows, steps and transactions."""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, TypeVar

from celery import Celery

from . import celery_binding
from .client import Management, WorkflowHandle, new_workflow_row, start_workflow
from .context import current_execution, current_step
from .database import Database
from .retry import RetryPolicy
from .settings import Settings
from .store import Store
from .transactions import Transactions, check_transaction_signature

logger = logging.getLogger("durable")

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

_UNSET: Any = object()

# Every live Durable app: module-level helpers called outside a workflow
# (durable.send, durable.get_event) use the only one there is.
_apps: "weakref.WeakSet[Durable]" = weakref.WeakSet()


def known_apps() -> list["Durable"]:
    return list(_apps)


@dataclass(frozen=True)
class StartOptions:
    workflow_id: str | None = None
    dedup_key: str | None = None
    queue: str | None = None
    priority: int = 0
    timeout: float | None = None  # seconds; past it the workflow is cancelled
    on_duplicate: str = "raise"  # or "return_existing"
    max_recovery_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.workflow_id is not None and (not isinstance(self.workflow_id, str) or not self.workflow_id or len(self.workflow_id) > 255):
            raise ValueError(f"workflow_id must be a non-empty string of at most 255 characters, got {self.workflow_id!r}")
        if self.dedup_key is not None and (not isinstance(self.dedup_key, str) or not self.dedup_key or len(self.dedup_key) > 255):
            raise ValueError(f"dedup_key must be a non-empty string of at most 255 characters, got {self.dedup_key!r}")
        if not isinstance(self.priority, int) or not 0 <= self.priority <= 9:
            raise ValueError(f"priority must be an integer from 0 to 9, got {self.priority!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.on_duplicate not in ("raise", "return_existing"):
            raise ValueError(f"on_duplicate must be 'raise' or 'return_existing', got {self.on_duplicate!r}")
        if self.max_recovery_attempts is not None and self.max_recovery_attempts < 0:
            raise ValueError("max_recovery_attempts must be >= 0")


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


class BoundStart(Generic[R]):
    def __init__(self, workflow: WorkflowFunction[R], options: StartOptions):
        self.workflow = workflow
        self.opts = options

    def start(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        durable = self.workflow.durable
        execution = current_execution()
        as_child = execution is not None and current_step() is None
        row = new_workflow_row(
            durable.settings,
            name=self.workflow.name,
            args=args,
            kwargs=kwargs,
            # a child's ID is derived from its parent's history: deterministic
            workflow_id=self.opts.workflow_id or ("" if as_child else None),
            queue=self.opts.queue,
            dedup_key=self.opts.dedup_key,
            priority=self.opts.priority,
            timeout_seconds=self.opts.timeout,
            max_recovery_attempts=self.opts.max_recovery_attempts,
        )
        if as_child:
            assert execution is not None
            child_id = execution.start_child(row, self.workflow.name)
            return WorkflowHandle(child_id, durable)
        return start_workflow(durable, row, self.opts.on_duplicate)


class StepFunction:
    """A registered step: checkpointed when called inside a workflow, a plain
    call elsewhere (and inside another step)."""

    def __init__(self, fn: Callable[..., Any], name: str, policy: RetryPolicy, transactional: bool = False, isolation: str | None = None):
        self.fn = fn
        self.name = name
        self.policy = policy
        self.transactional = transactional
        self.isolation = isolation
        self.durable: Durable | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        execution = current_execution()
        if execution is None or current_step() is not None:
            if self.transactional and self.durable is not None:
                return self.durable.transactions.run_outside(self, args, kwargs)
            return self.fn(*args, **kwargs)
        return execution.run_step(self, args, kwargs)


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
        **overrides: Any,
    ):
        base = settings or Settings.from_env()
        self.settings = base.with_overrides(
            database_url=database_url, broker_url=broker_url, app_database_url=app_database_url, **overrides
        )
        if celery_app is None:
            celery_app = Celery("durable", broker=self.settings.resolved_broker_url)
        self.celery = celery_binding.configure_app(celery_app, self.settings)
        store = Store(Database(self.settings.resolved_database_url, echo=self.settings.sql_echo))
        super().__init__(store, celery_binding.Dispatcher(self.celery, store), self.settings)
        self.registry: dict[str, WorkflowFunction[Any]] = {}
        self.transactions = Transactions(self)
        celery_binding.bind(self)
        _apps.add(self)

    def workflow(
        self,
        fn: Callable[..., R] | None = None,
        *,
        name: str | None = None,
        max_recovery_attempts: int | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Any:
        def register(f: Callable[..., R]) -> WorkflowFunction[R]:
            if not callable(f):
                raise TypeError(f"@workflow needs a function, got {f!r}")
            wf_name = name or f.__qualname__
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
    ) -> Any:
        policy = RetryPolicy(
            retries=retries, interval_seconds=interval, backoff=backoff,
            max_interval_seconds=max_interval, jitter=jitter, timeout_seconds=timeout,
            retry_on=_exception_tuple(retry_on, "retry_on"),
            dont_retry_on=_exception_tuple(dont_retry_on, "dont_retry_on"),
        )

        def register(f: Callable[..., Any]) -> StepFunction:
            if not callable(f):
                raise TypeError(f"@step needs a function, got {f!r}")
            step = StepFunction(f, name or f.__qualname__, policy)
            step.durable = self
            return step

        return register(fn) if fn is not None else register

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
    ) -> Any:
        """An exactly-once database write: the function's first parameter
        receives a SQLAlchemy Session; its writes and the step's checkpoint
        commit in one transaction."""
        policy = RetryPolicy(
            retries=retries, interval_seconds=interval, backoff=backoff, max_interval_seconds=max_interval,
        )

        def register(f: Callable[..., Any]) -> StepFunction:
            check_transaction_signature(f)
            step = StepFunction(f, name or f.__qualname__, policy, transactional=True, isolation=isolation)
            step.durable = self
            return step

        return register(fn) if fn is not None else register

    def migrate(self) -> str:
        return self.store.db.migrate()


def _exception_tuple(value: Any, what: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if not (inspect.isclass(item) and issubclass(item, BaseException)):
            raise TypeError(f"{what} must be exception classes, got {item!r}")
    return tuple(items)
