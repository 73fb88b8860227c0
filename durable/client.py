"""Starting, awaiting and managing workflows from any process.

`DurableClient` is for web apps that do not import workflow code: it writes
the workflow row and rings the broker, nothing more. It imports nothing of
the engine or the worker (a test holds it to that).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import uuid
from typing import Any, Callable, Sequence, TypeVar

from celery import Celery

from . import mailbox
from . import tracing
from .clock import SYSTEM_CLOCK, Clock
from .context import current_execution, in_workflow_code
from .database import Database
from .async_start import AsyncStarts
from .background_publish import BackgroundDispatcher
from .dispatch import CeleryDispatcher, Dispatcher, configure_app, publish_if_runnable
from .errors import DuplicateWorkflowError, WorkflowNotFoundError
from .records import Status, StepInfo, WorkflowStatus
from .settings import Settings
from .in_transaction import InTransaction, start_in_transaction
from .starting import StartOptions, check_name, new_workflow_row, publish_if_created, start_workflow
from .store import DedupConflict, Store
from .store.db_clock import database_clock
from .store.listen import EndedListener
from .recorded_inputs import RecordedInputs
from .handle import WorkflowHandle
from .status_rows import step_info, workflow_status

T = TypeVar("T")

__all__ = ["DurableClient", "Management", "WorkflowHandle", "new_workflow_row"]


class Management:
    """Inspect and steer workflows; shared by `Durable` and `DurableClient`."""

    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings, clock: Clock = SYSTEM_CLOCK):
        self.store = store
        self.dispatcher = dispatcher
        self.start_dispatcher = dispatcher  # what publishes a start (see background_publish.py)
        self.settings = settings
        self.clock = clock
        self._ended_listener: EndedListener | None = None

    def ended_listener(self) -> EndedListener | None:
        """This process's LISTEN on ended workflows (Postgres; None on SQLite)."""
        if self.store.db.is_sqlite:
            return None
        if self._ended_listener is None:
            self._ended_listener = EndedListener(self.store.db)
        return self._ended_listener

    def close(self) -> None:
        """Stop waiting for notifications and close the database connections
        (a web app's shutdown), once the starts' messages are published. A
        later call opens them again."""
        if isinstance(self.start_dispatcher, BackgroundDispatcher):
            self.start_dispatcher.flush()
        if self._ended_listener is not None:
            self._ended_listener.stop()
            self._ended_listener = None
        self.store.db.dispose()

    def handle(self, workflow_id: str) -> WorkflowHandle:
        return WorkflowHandle(workflow_id, self)

    async def get_async(self, workflow_id: str, with_payloads: bool = True) -> WorkflowStatus:
        """`get()` for asyncio code: its one query runs in the loop's default
        executor."""
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self.get, workflow_id, with_payloads)
        )

    def get(self, workflow_id: str, with_payloads: bool = True) -> WorkflowStatus:
        row = self.store.workflow_row(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return workflow_status(row, with_payloads)

    def list_workflows(
        self,
        status: str | Status | Sequence[str | Status] | None = None,
        name: str | None = None,
        queue: str | None = None,
        created_after: Any = None,
        created_before: Any = None,
        limit: int | None = 100,
        offset: int = 0,
        with_payloads: bool = False,
        parent_workflow_id: str | None = None,
        load_input: bool | None = None,
        load_output: bool | None = None,
    ) -> list[WorkflowStatus]:
        """Workflows newest first. Their `inputs` and `output` are neither
        read nor decoded unless asked (`load_input`, `load_output`, or
        `with_payloads` for both): a page of summaries stays small however
        large the payloads."""
        statuses = None
        if status is not None:
            items = [status] if isinstance(status, (str, Status)) else list(status)
            statuses = [Status(s).value for s in items]
        load_input = with_payloads if load_input is None else load_input
        load_output = with_payloads if load_output is None else load_output
        rows = self.store.list_workflows(
            status=statuses, name=name, queue=queue,
            created_after_ms=_to_ms(created_after), created_before_ms=_to_ms(created_before),
            parent_workflow_id=parent_workflow_id, limit=limit, offset=offset,
            load_input=load_input, load_output=load_output,
        )
        return [workflow_status(r, load_input=load_input, load_output=load_output) for r in rows]

    def list_steps(self, workflow_id: str) -> list[StepInfo]:
        if self.store.workflow_summary(workflow_id) is None:
            raise WorkflowNotFoundError(workflow_id)
        return [step_info(r) for r in self.store.list_steps(workflow_id)]

    def cancel(self, workflow_id: str) -> list[str]:
        """Cancel the workflow and its active children. A running execution
        stops at its next checkpoint. Returns the IDs cancelled."""
        if self.store.workflow_summary(workflow_id) is None:
            raise WorkflowNotFoundError(workflow_id)
        cancelled = self.store.cancel(workflow_id, self.clock.now_ms())
        for parent in self._parents_to_wake(cancelled):
            publish_if_runnable(self.store, self.dispatcher, parent)
        return cancelled

    def _parents_to_wake(self, cancelled: list[str]) -> set[str]:
        parents = set()
        for workflow_id in cancelled:
            row = self.store.workflow_summary(workflow_id)
            if row and row["parent_workflow_id"] and row["parent_workflow_id"] not in cancelled:
                parents.add(row["parent_workflow_id"])
        return parents

    def resume(self, workflow_id: str) -> WorkflowHandle:
        """Run a cancelled or quarantined workflow again from its last checkpoint."""
        row = self.store.workflow_summary(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        resumable = (Status.CANCELLED.value, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value)
        if row["status"] not in resumable:
            raise ValueError(
                f"workflow {workflow_id!r} is {row['status']}: only CANCELLED or "
                "MAX_RECOVERY_ATTEMPTS_EXCEEDED workflows can be resumed (fork re-runs any workflow)"
            )
        try:
            resumed = self.store.resume(workflow_id, self.clock.now_ms(), int(self.settings.redelivery_seconds * 1000))
        except DedupConflict as conflict:
            raise DuplicateWorkflowError(row["dedup_key"], row["queue"], conflict.holder_workflow_id) from None
        if resumed:
            self.dispatcher.publish(workflow_id, row["name"], row["queue"], row["priority"])
        return WorkflowHandle(workflow_id, self)

    def fork(self, workflow_id: str, from_step: int, new_workflow_id: str | None = None) -> WorkflowHandle:
        """A new workflow with the same inputs that reuses the source's
        checkpoints before `from_step` and runs the rest again. Its row, its
        copied checkpoints and events are written in one transaction. A
        `new_workflow_id` that is already taken is refused (ValueError):
        a fork never writes into an existing workflow."""
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
            raise ValueError(f"from_step must be an integer >= 0, got {from_step!r}")
        check_name(new_workflow_id, "new_workflow_id", optional=True)
        row = self.store.workflow_row(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        now = self.clock.now_ms()
        new_row = dict(
            workflow_id=new_workflow_id or str(uuid.uuid4()), name=row["name"],
            status=Status.ENQUEUED.value, queue=row["queue"], dedup_key=None,
            priority=row["priority"], inputs=row["inputs"],
            max_recovery_attempts=row["max_recovery_attempts"],
            redispatch_at_ms=now + int(self.settings.redelivery_seconds * 1000),
            app_version=row["app_version"], created_at_ms=now, updated_at_ms=now,
        )
        store = self.store
        if not store.fork_workflow(new_row, workflow_id, from_step, after_copy=store.restore_events):
            raise ValueError(
                f"cannot fork {workflow_id!r} as {new_row['workflow_id']!r}: a workflow with that ID "
                "already exists (a fork needs a new ID; omit new_workflow_id for a fresh one)"
            )
        self.dispatcher.publish(new_row["workflow_id"], row["name"], row["queue"], row["priority"])
        return WorkflowHandle(new_row["workflow_id"], self)

    def send(
        self, workflow_id: str, message: Any, topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Send a durable message to a workflow, which `durable.recv(topic)`
        returns to it exactly once, oldest first. Raises WorkflowNotFoundError
        for an unknown workflow and SerializationError for a message that
        cannot be stored (nothing is written). A workflow that already ended
        gets the message stored anyway (as in DBOS). From workflow code this
        is the checkpointed `durable.send` step; elsewhere pass an
        `idempotency_key` to make retries of one send store one message."""
        execution = in_workflow_code()
        if execution is not None and execution.database_url == self.store.db.url:
            if idempotency_key is not None:
                raise ValueError(
                    "idempotency_key is for sends from outside a workflow; "
                    "a workflow's send is already exactly-once"
                )
            execution.send(workflow_id, message, topic)
            return
        sender = current_execution()
        mailbox.send(
            self.store, self.dispatcher, self.settings, workflow_id, message, topic, idempotency_key,
            sender_workflow_id=sender.workflow_id if sender else None, clock=self.clock,
        )

    def get_event(self, workflow_id: str, key: str, timeout: float | None = 60.0) -> Any:
        """The latest value workflow `workflow_id` published for `key` with
        `durable.set_event`, polling up to `timeout` seconds (None: no
        limit) for it to be set; None if it was not. The workflow need not
        exist yet. In workflow code it is the checkpointed step."""
        execution = in_workflow_code()
        if execution is not None and execution.database_url == self.store.db.url:
            return execution.get_event(workflow_id, key, timeout)
        return mailbox.wait_for_event(self.store, workflow_id, key, timeout, clock=self.clock)


class DurableClient(Management):
    """Enqueue and manage workflows by name, without importing their code."""

    def __init__(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        settings: Settings | None = None,
        celery_app: Celery | None = None,
    ):
        self.settings = (settings or Settings.from_env()).with_overrides(
            database_url=database_url, broker_url=broker_url
        )
        if celery_app is None:
            celery_app = Celery("durable-client", broker=self.settings.resolved_broker_url)
        celery_app = configure_app(celery_app, self.settings)
        store = Store(Database(
            self.settings.resolved_database_url, echo=self.settings.sql_echo,
            auto_migrate=self.settings.auto_migrate,
            migration_lock_timeout_seconds=self.settings.migration_lock_timeout_seconds,
        ))
        super().__init__(store, CeleryDispatcher(celery_app), self.settings, database_clock(store.db))
        self.start_dispatcher = BackgroundDispatcher(self.dispatcher)  # enqueue returns at its commit
        self._in_transaction: InTransaction | None = None
        self._recorded_inputs = RecordedInputs(store.db, self.clock)
        self._async_starts = AsyncStarts(store.db, lambda columns: store._insert_statement(columns)._driver_sql())

    @tracing.enqueue_traced
    def enqueue(
        self,
        workflow_name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        queue: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        max_recovery_attempts: int | None = None,
        on_duplicate: str = "raise",
        transaction: Any = None,
        allow_unknown: bool = False,
        partition_key: str | None = None,
        delay: float | None = None,
        start_at: dt.datetime | None = None,
        debounce: float | None = None,
    ) -> WorkflowHandle:
        """Start workflow `workflow_name` with these arguments; returns its
        handle at once.

        `transaction`: a SQLAlchemy Session or Connection, or a psycopg
        connection, in an open transaction on durable's system database
        (another database is refused with ValueError). The workflow row is
        written in that transaction: rolled back, no workflow exists;
        committed, it runs once, published after the commit (a psycopg
        connection has no commit hook: the recovery sweeper publishes it
        within a sweep interval). See docs/web-apps.md.

        The arguments are checked against the parameters that workers
        recorded for this workflow at their start (WorkflowInputError naming
        the parameter; nothing is written). A name no worker recorded is
        refused with UnknownWorkflowError once the database knows any
        workflow at all (before any worker ever started, nothing can be
        checked); `allow_unknown=True` enqueues it anyway.

        `partition_key`, `delay`, `start_at` and `debounce` are the flow
        control options of `.options()` (docs/flow-control-and-schedules.md)."""
        row = self._checked_row(
            workflow_name, args, kwargs, allow_unknown, workflow_id=workflow_id, queue=queue,
            dedup_key=dedup_key, priority=priority, timeout=timeout, on_duplicate=on_duplicate,
            max_recovery_attempts=max_recovery_attempts, partition_key=partition_key, delay=delay,
            start_at=start_at, debounce=debounce,
        )
        if debounce is not None and transaction is not None:
            raise ValueError("debounce replaces a pending workflow's inputs: not inside a caller's transaction")
        if transaction is not None:
            if self._in_transaction is None:
                self._in_transaction = InTransaction(self.store, self.start_dispatcher, self.clock)
            workflow_id = start_in_transaction(self._in_transaction, row, transaction, on_duplicate)
        else:
            workflow_id = start_workflow(
                self.store, self.start_dispatcher, row, on_duplicate, self.clock, debounce=debounce is not None
            )
        return WorkflowHandle(workflow_id, self)

    def _checked_row(
        self, workflow_name: str, args: Sequence[Any], kwargs: dict[str, Any] | None, allow_unknown: bool,
        **options: Any,
    ) -> dict[str, Any]:
        """The new workflow's row, once the options and the arguments were
        checked (against the recorded parameters too): nothing is written
        for bad input."""
        if not isinstance(workflow_name, str) or not workflow_name:
            raise ValueError(f"workflow_name must be a non-empty string, got {workflow_name!r}")
        opts = StartOptions(**options)  # validates the options the same way start() does
        row = new_workflow_row(
            self.settings, workflow_name, args, kwargs or {}, workflow_id=opts.workflow_id, queue=opts.queue,
            dedup_key=opts.dedup_key, priority=opts.priority, timeout_seconds=opts.timeout,
            max_recovery_attempts=opts.max_recovery_attempts, clock=self.clock,
            partition_key=opts.partition_key, start_at_ms=opts.start_at_ms(self.clock.now_ms()),
        )
        self._recorded_inputs.check(workflow_name, args, kwargs or {}, allow_unknown)
        return row

    async def enqueue_async(
        self,
        workflow_name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        queue: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        max_recovery_attempts: int | None = None,
        on_duplicate: str = "raise",
        allow_unknown: bool = False,
        partition_key: str | None = None,
        delay: float | None = None,
        start_at: dt.datetime | None = None,
        debounce: float | None = None,
    ) -> WorkflowHandle:
        """`enqueue()` for asyncio code (FastAPI, Starlette). On Postgres a
        plain start (no dedup key) is one INSERT awaited on the running loop
        (durable/async_start.py); the message is published after it by
        durable's publishing thread, as for `enqueue()`. What needs more than
        that INSERT (a dedup key, a database that is away, the first look at
        a workflow's recorded parameters, SQLite) runs the synchronous
        enqueue in the loop's executor, so the loop keeps serving meanwhile.
        To enqueue in an `AsyncSession`'s transaction, run the sync call on
        its session: `await session.run_sync(lambda s: client.enqueue(..., transaction=s))`."""
        options = dict(
            workflow_id=workflow_id, queue=queue, dedup_key=dedup_key, priority=priority, timeout=timeout,
            on_duplicate=on_duplicate, max_recovery_attempts=max_recovery_attempts,
            partition_key=partition_key, delay=delay, start_at=start_at, debounce=debounce,
        )
        if not (self._async_starts.ready() and self._recorded_inputs.known(workflow_name, allow_unknown)):
            return await self._in_executor(self.enqueue, workflow_name, args, kwargs, allow_unknown=allow_unknown,
                                           **options)
        with tracing.enqueue_span(str(workflow_name), queue):
            row = self._checked_row(workflow_name, args, kwargs, allow_unknown, **options)
            if not self._async_starts.handles(row) or debounce is not None:
                workflow_id = await self._in_executor(
                    start_workflow, self.store, self.start_dispatcher, row, on_duplicate, self.clock,
                    debounce=debounce is not None,
                )
                return WorkflowHandle(workflow_id, self)
            import psycopg

            try:
                result = await self._async_starts.insert(row)
            except psycopg.Error:
                # away or refused: the synchronous start, with the same row (so
                # the same ID, if the INSERT did commit), waits or says why
                workflow_id = await self._in_executor(
                    start_workflow, self.store, self.start_dispatcher, row, on_duplicate, self.clock,
                )
                return WorkflowHandle(workflow_id, self)
            # handed to the publishing thread once this task yields: waking that
            # thread here cost the caller ~0.1 ms (a context switch) before it
            # could answer its request; a hand-off that never runs leaves the
            # message to the sweeper, as a failed publish does
            asyncio.get_running_loop().call_soon(
                publish_if_created, self.start_dispatcher, row, result.created, self.clock
            )
            return WorkflowHandle(result.workflow_id, self)

    def close(self) -> None:
        self._async_starts.close()
        super().close()

    @staticmethod
    async def _in_executor(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # in this context (the request's span, its context variables): the
        # loop's executor does not carry it into its thread by itself
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, call)


def _to_ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value * 1000)
    return int(value.timestamp() * 1000)
