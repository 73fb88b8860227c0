"""The Celery side: one internal task that executes a workflow, the message
that rings it, and the worker hooks (lost-child report, recovery sweeper).

The task runs with acks_late and reject_on_worker_lost: it returns, and its
message is acknowledged, only after the execution's last checkpoint committed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps
from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from .engine import Execution, quarantine, unknown_workflow
from .database import is_unavailable, retry_while_unavailable
from .leases import LeaseKeeper
from .pool_watch import PoolWatch
from .records import Status
from .recovery import Sweeper
from .settings import Settings
from .store import Store

if TYPE_CHECKING:
    from .app import Durable

logger = logging.getLogger("durable.celery")

RUN_TASK = "durable.run_workflow"


def process_owner(pid: int | None = None) -> str:
    """Lease owner name of a process: the worker's main process can compute it
    for a child it lost."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def configure_app(app: Celery, settings: Settings) -> Celery:
    # Celery waits worker_lost_wait (10 s by default) for a dead child's
    # result before reporting it lost; durable tasks publish no result, and
    # the report is what lets the redelivered message claim at once.
    if "worker_lost_wait" not in app.conf.changes:
        app.conf.worker_lost_wait = 0.5
    broker = app.conf.broker_url or ""
    if broker.startswith("filesystem://") or (not broker and settings.is_embedded_broker):
        if not broker:
            app.conf.broker_url = settings.resolved_broker_url
        options = dict(settings.broker_transport_options())
        options.update(app.conf.broker_transport_options or {})
        app.conf.broker_transport_options = options
    return app


class Dispatcher:
    """Publishes "look at workflow X" messages. A failed publish is logged,
    not raised: the row is the truth and the sweeper publishes it again."""

    def __init__(self, app: Celery, store: Store):
        self.app = app
        self.store = store

    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        try:
            self.app.send_task(
                RUN_TASK,
                args=[workflow_id, name],
                queue=queue,
                routing_key=queue,
                priority=priority,
                shadow=f"durable:{name}",
                argsrepr=f"({workflow_id!r}, {name!r})",
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
            return True
        except Exception as exc:  # noqa: BLE001 - the sweeper redelivers
            logger.warning("could not publish workflow %s (the sweeper will): %s", workflow_id, exc)
            return False

    def publish_by_id(self, workflow_id: str) -> bool:
        row = self.store.workflow_row(workflow_id)
        if row is None or row["status"] not in (Status.ENQUEUED.value, Status.PENDING.value):
            return False
        return self.publish(workflow_id, row["name"], row["queue"], row["priority"])


class Runner:
    """Executes one workflow message in a worker process."""

    def __init__(self, durable: "Durable"):
        self.durable = durable
        self.leases = LeaseKeeper(durable.store, durable.settings.lease_seconds)

    def _max_recovery_attempts(self, name: str) -> int:
        workflow = self.durable.registry.get(name)
        if workflow is not None and workflow.defaults.max_recovery_attempts is not None:
            return workflow.defaults.max_recovery_attempts
        return self.durable.settings.max_recovery_attempts

    def execute(self, workflow_id: str, workflow_name: str | None = None) -> str:
        with self.durable.store.db.pinned():
            return self._execute(workflow_id, workflow_name)

    def _execute(self, workflow_id: str, workflow_name: str | None) -> str:
        store = self.durable.store
        owner = process_owner()
        lease_ms = int(self.durable.settings.lease_seconds * 1000)
        claim = retry_while_unavailable(
            lambda: store.claim(
                workflow_id, owner, int(time.time() * 1000), lease_ms,
                self._max_recovery_attempts, name_hint=workflow_name,
            ),
            "claiming a workflow",
        )
        if claim is None:
            return "skipped"  # ended, or a live execution holds it: this message is a duplicate
        if claim.status == Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value:
            quarantine(self.durable, claim)
            return "quarantined"
        workflow = self.durable.registry.get(claim.name)
        if workflow is None:
            unknown_workflow(self.durable, claim)
            return "unknown"
        self.leases.track(workflow_id, claim.epoch, owner)
        try:
            Execution(self.durable, claim, owner).run(workflow)
        finally:
            self.leases.untrack(workflow_id)
        return "executed"


def bind(durable: "Durable") -> None:
    app = durable.celery
    runner = Runner(durable)
    durable.runner = runner  # type: ignore[attr-defined]

    class DurableRequest(Request):
        """Runs in the worker's main process, which sees a pool child die."""

        def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc)
            if isinstance(exc, WorkerLostError) and self.worker_pid and self.args:
                try:
                    durable.store.expire_lost_lease(
                        str(self.args[0]), process_owner(self.worker_pid), str(exc),
                        int(time.time() * 1000),
                    )
                except Exception:  # noqa: BLE001 - the lease expires by itself anyway
                    logger.exception("could not record the loss of workflow %s", self.args[0])
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    @app.task(
        name=RUN_TASK,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        typing=False,
        Request=DurableRequest,
    )
    def run_workflow(workflow_id: str, workflow_name: str | None = None) -> str:
        return runner.execute(workflow_id, workflow_name)

    class RecoverySweeper(bootsteps.StartStopStep):
        """Publishes workflows that lost their message or their worker."""

        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any):
            self.sweeper: Sweeper | None = None

        def start(self, worker: Any) -> None:
            self.sweeper = Sweeper(durable.store, durable.dispatcher, durable.settings)
            self.sweeper.start()

        def stop(self, worker: Any) -> None:
            if self.sweeper is not None:
                self.sweeper.stop()

    class SchemaBeforeFork(bootsteps.Step):
        """Migrates in the worker's main process while the blueprint is built,
        before the pool forks: a child forked while the sweeper thread is
        migrating would inherit locks held by a thread it does not have."""

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            try:
                durable.store.db.ensure_schema()
            except Exception as exc:  # noqa: BLE001 - children migrate when it is back
                if not is_unavailable(exc):
                    raise
                logger.warning("database unavailable at worker start (will retry): %s", exc)

    app.steps["worker"].add(SchemaBeforeFork)
    app.steps["worker"].add(RecoverySweeper)
    app.steps["worker"].add(PoolWatch)  # a dead pool child is noticed within 0.5 s, not 5
