"""Publishing "look at workflow X": the only messages durable sends.

A message carries a workflow's ID and name and nothing else; the row is the
truth. A workflow's message is the task `durable.run_workflow`, shown in
Flower as `durable:<name>`. A dispatched step runs as a workflow of its own
(see `dispatched_steps.py`) whose message is a Celery task of the step's own
name, `durable.step:<step>`, or `durable.task:<task>` for an existing Celery
task, which Flower shows under the task's own name. A failed publish is logged, not raised: the recovery sweeper
publishes any runnable workflow nobody picked up. The engine, the client
and the sweeper publish through a `Dispatcher`; tests hand them one that
records what was published instead of ringing a broker.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Protocol

from celery import Celery
from kombu.utils.uuid import uuid

from . import redis_broker
from .embedded_broker import TRANSPORT as EMBEDDED_TRANSPORT
from .records import Status
from .settings import Settings
from .store import Store
from .task_messages import TaskPublisher

logger = logging.getLogger("durable.dispatch")

RUN_TASK = "durable.run_workflow"
STEP_PREFIX = "durable.step:"  # a dispatched @dur.step
TASK_PREFIX = "durable.task:"  # an existing Celery task run as a durable step

RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}


def celery_task_name(workflow_name: str) -> str:
    """The Celery task that carries this workflow's messages: a dispatched
    step's own task (its rate and time limits apply), else the workflow task."""
    if workflow_name.startswith((STEP_PREFIX, TASK_PREFIX)):
        return workflow_name
    return RUN_TASK


def is_durable_task(celery_task: str | None) -> bool:
    """A Celery task that carries durable messages (args: workflow ID, name)."""
    return celery_task == RUN_TASK or (
        celery_task is not None and celery_task.startswith((STEP_PREFIX, TASK_PREFIX))
    )


def display_name(workflow_name: str) -> str:
    """What Flower and the worker's log call the message."""
    if workflow_name.startswith(TASK_PREFIX):
        return workflow_name[len(TASK_PREFIX):]
    if workflow_name.startswith(STEP_PREFIX):
        return workflow_name
    return f"durable:{workflow_name}"


class Dispatcher(Protocol):
    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        """Ring the broker for this workflow; False when the publish failed."""


class CeleryDispatcher:
    """Publishes Celery task messages: built from a template per workflow
    name and queue (task_messages.py), or by Celery's `send_task` when
    something watches publishes."""

    def __init__(self, app: Celery):
        self.app = app
        self.messages = TaskPublisher(app, RETRY_POLICY, broker_priority)

    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        try:
            task_name = celery_task_name(name)
            argsrepr = f"({workflow_id!r}, {name!r})"
            template = self.messages.template(
                task_name, name, queue, priority, display_name(name)
            ) if self.messages.usable() else None
            if template is not None:
                self.messages.publish(template, uuid(), [workflow_id, name], argsrepr)
                return True
            self.app.send_task(
                task_name,
                args=[workflow_id, name],
                queue=queue,
                routing_key=queue,
                priority=broker_priority(self.app.conf.broker_url or "", priority),
                shadow=display_name(name),
                argsrepr=argsrepr,
                retry=True,
                retry_policy=RETRY_POLICY,
            )
            return True
        except Exception as exc:  # noqa: BLE001 - the sweeper redelivers
            logger.warning("could not publish workflow %s (the sweeper will): %s", workflow_id, exc)
            return False


def broker_priority(broker_url: str, priority: int) -> int:
    """The message priority that makes a higher durable `priority` (0-9) go
    first: RabbitMQ serves the highest number first, kombu's Redis transport
    the lowest."""
    if broker_url.split(":", 1)[0] in ("redis", "rediss", "sentinel"):
        return 9 - priority
    return priority


def publish_if_runnable(store: Store, dispatcher: Dispatcher, workflow_id: str) -> bool:
    """Publish a workflow known only by its ID (a parent to wake), if it can
    still run."""
    row = store.workflow_row(workflow_id)
    if row is None or row["status"] not in (Status.ENQUEUED.value, Status.PENDING.value):
        return False
    return dispatcher.publish(workflow_id, row["name"], row["queue"], row["priority"])


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
        if not app.conf.broker_transport:
            app.conf.broker_transport = EMBEDDED_TRANSPORT  # messages written whole
        options = dict(settings.broker_transport_options())
        options.update(app.conf.broker_transport_options or {})
        app.conf.broker_transport_options = options
    redis_broker.fix_for(app.conf.broker_url or "")  # a worker that lives through a Redis outage
    return app
