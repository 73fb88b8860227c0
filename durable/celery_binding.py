"""The worker side of Celery: one internal task that runs a workflow
message, and the worker hooks (lost-child report, a revoke that cancels,
recovery sweeper, schema before fork, pool watch).

The task runs with acks_late and reject_on_worker_lost: it returns, and its
message is acknowledged, only after the execution's last checkpoint
committed. The task carries its `Runner`; the hooks find it through the
app's task registry, so nothing here is kept in a global.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, bootsteps
from celery.exceptions import WorkerLostError
from celery.signals import task_revoked, worker_process_init
from celery.worker.request import Request

from .client import Management
from .db_errors import is_transient
from .dispatch import RUN_TASK, TASK_PREFIX, is_durable_task, process_owner
from .errors import WorkflowNotFoundError
from .fork_guard import no_fork_meanwhile
from .inputs import Parameters, dumps_schema
from .pool_watch import PoolWatch
from .recovery import Sweeper
from . import serialization as ser
from .runner import Delivery, Runner
from .store.workflow_schemas import record_workflow_schemas

logger = logging.getLogger("durable.celery")


def bind(app: Celery, runner: Runner) -> None:
    """Register the workflow task and the worker hooks on `app`."""
    app.task(
        name=RUN_TASK,
        bind=True,
        # this app's task, carrying this app's runner: a shared one would be
        # added to every Celery app in the process, and a second Durable app's
        # would replace the first one's when that app is finalized
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        typing=False,
        Request=DurableRequest,
        durable_runner=runner,
    )(run_workflow)
    app.steps["worker"].add(SchemaBeforeFork)
    app.steps["consumer"].add(RecordWorkflowInputs)
    app.steps["worker"].add(TasksAsSteps)
    app.steps["worker"].add(RecoverySweeper)
    app.steps["worker"].add(PoolWatch)  # a dead pool child is noticed within 0.5 s, not 5
    worker_process_init.connect(warm_up_pool_child, weak=False, dispatch_uid="durable.warm_up_pool_child")
    task_revoked.connect(cancel_revoked_workflow, weak=False, dispatch_uid="durable.cancel_revoked_workflow")


def warm_up_pool_child(**kwargs: Any) -> None:
    """A prefork pool child, just forked: its database connection is made
    in a thread now, while the main process is still connecting to the
    broker, so its first workflow (a restarted worker's own lost work) does
    not wait for it (the store's statements come compiled from the main
    process: SchemaBeforeFork). A thread: a database slow to answer must not
    hold the child's start, which Celery times out."""
    from celery import current_app

    app = current_app._get_current_object()
    if RUN_TASK not in app.tasks:
        return
    store = _runner_of(app).store

    def warm_up() -> None:
        try:
            store.warm_up()
        except Exception as exc:  # noqa: BLE001 - the first workflow connects instead
            logger.debug("pool child warm-up: %s", exc)

    threading.Thread(target=warm_up, name="durable-warm-up", daemon=True).start()


def bind_step_task(app: Celery, name: str, like: Any = None) -> None:
    """Register the Celery task that carries a dispatched step's messages
    (named as its workflow, `durable.step:...` or `durable.task:...`). An
    existing task's rate and time limits carry over, so Celery applies them
    to the step as it does to the task. Its runner is the app's."""
    if name in app.tasks:
        return
    limits = {
        option: getattr(like, option)
        for option in ("rate_limit", "time_limit", "soft_time_limit")
        if like is not None and getattr(like, option, None) is not None
    }
    app.task(
        name=name,
        bind=True,
        shared=False,  # this app's step, not every Celery app's in the process
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        typing=False,
        Request=DurableRequest,
        **limits,
    )(run_workflow)


def run_workflow(task: Task, workflow_id: str, workflow_name: str | None = None) -> str:
    """Every durable message: returns (the message is acked) once the
    execution's outcome is committed. An execution that ended its workflow
    ERROR, or quarantined it, raises, so Flower and the events show a
    failed task with the error; the outcome is already committed, and a
    failed task's message is acknowledged as well."""
    delivered_on = (task.request.delivery_info or {}).get("routing_key")
    delivery = _runner_of(task.app).deliver(workflow_id, workflow_name, delivered_on)
    if delivery.failed:
        raise WorkflowExecutionFailed(_failure_text(delivery))
    if delivery.ending is not None:
        return f"{delivery.ending.kind}: {delivery.workflow_id}"
    return f"{delivery.kind}: {delivery.workflow_id}"


class WorkflowExecutionFailed(Exception):
    """What Flower shows for an execution that ended its workflow ERROR,
    quarantined it, or found it unknown (one string argument: Celery
    pickles it into the failure event)."""


def _failure_text(delivery: Delivery) -> str:
    try:
        error = ser.loads_error(delivery.error) or {}
        detail = f"{error.get('type', 'error')}: {error.get('message', '')}"
    except (ValueError, AttributeError):
        detail = str(delivery.error)
    outcome = "ended ERROR" if delivery.kind == "executed" else delivery.kind
    return f"workflow {delivery.workflow_id} {outcome}: {detail}"


def _runner_of(app: Celery) -> Runner:
    runner: Runner = app.tasks[RUN_TASK].durable_runner
    return runner


class DurableRequest(Request):  # type: ignore[misc]  # celery is untyped
    """Runs in the worker's main process, which sees a pool child die."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)
        if isinstance(exc, WorkerLostError) and self.worker_pid and self.args:
            runner = _runner_of(self.task.app)
            try:
                with no_fork_meanwhile():  # the pool forks this child's replacement now
                    runner.store.expire_lost_lease(
                        str(self.args[0]), process_owner(self.worker_pid), str(exc), runner.clock.now_ms(),
                    )
            except Exception:  # noqa: BLE001 - the lease expires by itself anyway
                logger.exception("could not record the loss of workflow %s", self.args[0])
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def cancel_revoked_workflow(
    sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False, **_: Any
) -> None:
    """Celery's revoke of a durable message (Flower's Revoke, `celery
    control revoke`, with or without terminate) cancels its workflow and its
    active children, as `durable workflows cancel` does. Revoking only
    discards that message: the workflow would stay pending, the sweeper
    would publish it again, and it would run anyway. Runs in the worker's
    main process, which discards the message or kills the child running it.
    A terminated delivery that had gone on to the next links of its chain
    (local_links.py) cancels those: as in Celery, the chain stops there."""
    args = getattr(request, "args", None)
    if expired or sender is None or not is_durable_task(getattr(sender, "name", None)) or not args:
        return
    if RUN_TASK not in sender.app.tasks:  # a message of a durable name, on an app durable is not bound to
        return
    runner = _runner_of(sender.app)
    workflow_id = str(args[0])
    try:
        with no_fork_meanwhile():
            management = Management(runner.store, runner.collaborators.dispatcher, runner.settings, runner.clock)
            cancelled = management.cancel(workflow_id)
            if not cancelled and terminated:
                for link in runner.store.active_links_after(workflow_id):
                    cancelled += management.cancel(link)
    except WorkflowNotFoundError:  # deleted since (retention): nothing to cancel
        return
    except Exception:  # noqa: BLE001 - the workflow runs as if its message had been lost
        logger.exception("could not cancel workflow %s, whose message %s was revoked", workflow_id,
                         getattr(request, "id", "?"))
        return
    if cancelled:
        logger.info("message %s of workflow %s revoked: cancelled %s",
                    getattr(request, "id", "?"), workflow_id, ", ".join(cancelled))


class RecoverySweeper(bootsteps.StartStopStep):  # type: ignore[misc]
    """Publishes workflows that lost their message or their worker.

    Started while the worker is built, once the schema is checked and
    before the pool forks: its first pass (expire the leases of this
    host's dead processes, then sweep) overlaps the pool's start and the
    consumer's connection, so a restarted worker's own lost work is on
    the broker by the time its consumer is up. The pool's forks wait for
    its database calls (no_fork_meanwhile)."""

    requires = {"durable.celery_binding:SchemaBeforeFork"}

    def __init__(self, worker: Any, **kwargs: Any):
        runner = _runner_of(worker.app)
        self.sweeper = Sweeper(
            runner.store, runner.collaborators.dispatcher, runner.settings, runner.clock
        )
        self.sweeper.start()

    def stop(self, worker: Any) -> None:
        self.sweeper.stop()


class TasksAsSteps(bootsteps.Step):  # type: ignore[misc]
    """Every Celery task this worker knows can run as a durable step of a
    canvas (`dur.chain(...)`): register its `durable.task:<name>` twin once
    the app's modules are imported and before the consumer reads the task
    registry, so its messages are not rejected as unregistered."""

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        app = worker.app
        for name, task in list(app.tasks.items()):
            if not name.startswith(("celery.", "durable.")):
                bind_step_task(app, f"{TASK_PREFIX}{name}", like=task)


class SchemaBeforeFork(bootsteps.Step):  # type: ignore[misc]
    """Migrates in the worker's main process while the blueprint is built,
    before the pool forks: a child forked while the sweeper thread is
    migrating would inherit locks held by a thread it does not have. Then
    compiles the store's statements, once for the pool's children: each
    child compiling them itself after its fork (~30 ms of CPU) competed
    for the CPU with its worker's start and with its own first workflow
    (on two cores, a restarted worker's children were still compiling when
    its lost workflow arrived)."""

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        try:
            with no_fork_meanwhile():
                runner = _runner_of(worker.app)
                runner.store.db.ensure_schema()
                runner.declare()  # queues and schedules from code, before any start
                runner.store.compile_statements()
        except Exception as exc:  # noqa: BLE001 - children migrate when it is back
            if not is_transient(exc):
                raise
            logger.warning("database unavailable at worker start (will retry): %s", exc)


RECORD_AFTER_SECONDS = 1.0


class RecordWorkflowInputs(bootsteps.StartStopStep):  # type: ignore[misc]
    """Records each registered workflow's parameters as JSON Schema, in the
    worker's main process at its start: `DurableClient.enqueue` checks
    arguments by name against them and knows which names exist.

    A consumer step, run in a thread RECORD_AFTER_SECONDS after the
    consumer is up, so that it does not delay the first messages (a
    restarted worker's own lost work, taken within ~0.1 s): building the
    schemas loads pydantic and costs ~20 ms a workflow (~0.1 s of CPU for
    the benchmark's three), time the thread would hold the main process's
    GIL while the consumer starts and hands those messages to the pool.
    Once per worker, not again when the consumer reconnects."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer: Any, **kwargs: Any):
        super().__init__(consumer, **kwargs)
        self.thread: threading.Thread | None = None

    def start(self, consumer: Any) -> None:
        if self.thread is None:
            runner = _runner_of(consumer.app)
            self.thread = threading.Timer(RECORD_AFTER_SECONDS, record_inputs, args=(runner,))
            self.thread.name, self.thread.daemon = "durable-record-inputs", True
            self.thread.start()


def record_inputs(runner: Runner) -> None:
    now = runner.clock.now_ms()
    rows = []
    try:
        # All of it, not only the write: building the schemas imports
        # pydantic, and a pool child forked while this thread holds an
        # import's module lock would wait for that lock forever at its own
        # first import of the module (seen: a replacement child stuck in a
        # workflow's start(), which checks inputs with pydantic).
        with no_fork_meanwhile():
            for name, workflow in list(runner.registry.items()):
                parameters = getattr(workflow, "parameters", None)
                if isinstance(parameters, Parameters) and not name.startswith("durable."):
                    rows.append(dict(
                        name=name, parameters=dumps_schema(parameters),
                        app_version=runner.settings.app_version or None, updated_at_ms=now,
                    ))
            record_workflow_schemas(runner.store.db, rows)
    except Exception as exc:  # noqa: BLE001 - clients check against older records meanwhile
        logger.warning("could not record the workflows' parameters: %s", exc)
