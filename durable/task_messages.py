"""Durable's messages as Celery task messages, built without `send_task`.

Every durable message is a Celery protocol-2 task message with two
arguments (workflow ID and name), so workers, Flower and `celery events`
read it as any task. Celery's `send_task` rebuilds everything for each
message: the task's options, the route, the headers, the queue's
declaration, a producer from the pool; ~0.6 ms of CPU, and a chain link
publishes one. Here Celery builds the message once per (workflow name,
queue, priority) in this process, with its own functions
(`create_task_message`, and `send_task_message` handed a producer that
only records); each publish copies that template, sets what differs from
one message to the next (task ID, parent and root IDs, the arguments and
their repr, the reply-to of this thread) and hands it to a kombu producer
kept for the purpose. The queue is declared once per producer, as Celery's
producer would on its first publish.

Celery's own path is kept whenever something may watch or change a
publish: a receiver of `before_task_publish`, `after_task_publish` or
`task_sent` (tracing and error-reporting libraries hook publishes there),
task-sent events, a task protocol other than 2, or a task whose options
make each message differ (an `expires`).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from celery import Celery, signals
from kombu.messaging import Producer

# Per-message fields of the headers and properties: set at each publish.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Unsupported(Exception):
    """This message must go through Celery's send_task."""


class _Recorder:
    """A producer that records what Celery's `send_task_message` would publish."""

    connection = None

    def __init__(self) -> None:
        self.body: Any = None
        self.kwargs: dict[str, Any] = {}

    def publish(self, body: Any, **kwargs: Any) -> None:
        self.body, self.kwargs = body, kwargs


class Template:
    """One (workflow name, queue, priority)'s message, as Celery builds it."""

    def __init__(
        self, headers: dict[str, Any], publish_kwargs: dict[str, Any], declare: list[Any],
        retry_policy: dict[str, Any],
    ):
        self.headers = headers
        self.publish_kwargs = publish_kwargs
        self.declare = declare
        self.retry_policy = retry_policy  # merged into the app's, as send_task does


def build_template(
    app: Celery, task_name: str, queue: str, priority: int, shadow: str, args: list[Any],
    retry_policy: dict[str, Any],
) -> Template:
    """What `app.send_task(task_name, args=args, queue=queue,
    routing_key=queue, priority=priority, shadow=shadow)` publishes, with
    Celery's own option merging and routing, captured once."""
    task = app._tasks.get(task_name)  # as send_task looks it up: without finalizing the app
    options: dict[str, Any] = {}
    if task is not None:
        options = {k: v for k, v in task._get_exec_options().items() if v is not None}
    options.update(queue=queue, routing_key=queue, priority=priority)
    time_limit = options.pop("time_limit", None)
    soft_time_limit = options.pop("soft_time_limit", None)
    if options.pop("expires", None) is not None:
        raise Unsupported("a task with expires: its messages differ by the time they are sent")
    ignore_result = options.pop("ignore_result", None)
    options = app.amqp.router.route(options, task_name, args, {}, task)
    message = app.amqp.create_task_message(
        "template", task_name, args, {}, None, None, None, None, None, 0, None, None, None,
        "", time_limit, soft_time_limit, False, None, None, shadow, None,
        ignore_result=ignore_result, argsrepr="", **options,
    )
    recorder = _Recorder()
    app.amqp.send_task_message(recorder, task_name, message, retry=False, **options)
    kwargs = dict(recorder.kwargs)
    headers = kwargs.pop("headers")
    declare = list(kwargs.pop("declare", None) or [])
    for per_message in ("retry", "retry_policy", "correlation_id", "reply_to", "argsrepr"):
        kwargs.pop(per_message, None)
    if recorder.body != (args, {}, _EMBED) or kwargs.get("expiration") is not None:
        raise Unsupported(f"Celery built an unexpected message for {task_name}")
    return Template(headers, kwargs, declare, dict(app.conf.task_publish_retry_policy, **retry_policy))


class TaskPublisher:
    """Publishes durable messages from templates; one per Celery app."""

    def __init__(self, app: Celery, retry_policy: dict[str, Any], broker_priority: Callable[[str, int], int]):
        self.app = app
        self.retry_policy = retry_policy
        self.broker_priority = broker_priority  # (broker URL, durable priority) -> the message's
        self._templates: dict[tuple[str, str, int], Template | None] = {}
        self._idle: list[tuple[Producer, set[str]]] = []  # producers and the queues each declared
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def usable(self) -> bool:
        """Nothing watches a publish (checked at each: a receiver may connect
        at any time; the app's options are read when a template is built)."""
        return not (
            signals.before_task_publish.receivers or signals.after_task_publish.receivers
            or signals.task_sent.receivers
        )

    def template(self, task_name: str, name: str, queue: str, priority: int, shadow: str) -> Template | None:
        """The message of workflow `name` on `queue` at durable `priority`
        (0-9), built on first use in this process; None: send_task's."""
        self._after_fork()
        key = (name, queue, priority)
        if key not in self._templates:
            conf = self.app.conf
            try:
                if conf.task_send_sent_event or conf.task_protocol != 2:
                    raise Unsupported("sent events, or another task protocol")
                self._templates[key] = build_template(
                    self.app, task_name, queue, self.broker_priority(conf.broker_url or "", priority), shadow,
                    ["", name], self.retry_policy,
                )
            except Unsupported:
                self._templates[key] = None
        return self._templates[key]

    def publish(self, template: Template, task_id: str, args: list[Any], argsrepr: str) -> None:
        root_id, parent_id = task_id, None
        parent = self.app.current_worker_task
        if parent is not None:  # as send_task: a message sent by a task names it
            parent_id = parent.request.id
            root_id = parent.request.root_id or parent_id
        headers = dict(template.headers, id=task_id, root_id=root_id, parent_id=parent_id, argsrepr=argsrepr)
        producer, declared = self._acquire()
        try:
            for queue in template.declare:
                if queue.name not in declared:
                    producer.maybe_declare(queue, retry=True, **template.retry_policy)  # type: ignore[no-untyped-call]
                    declared.add(queue.name)
            producer.publish(  # type: ignore[no-untyped-call]  # argsrepr: as send_task, in the properties too
                (args, {}, _EMBED), headers=headers, correlation_id=task_id, reply_to=self.app.thread_oid,
                argsrepr=argsrepr, retry=True, retry_policy=template.retry_policy, **template.publish_kwargs,
            )
        except BaseException:
            _close_quietly(producer)  # its connection's state is unknown: not reused
            raise
        self._release(producer, declared)

    def _acquire(self) -> tuple[Producer, set[str]]:
        self._after_fork()
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Producer(self.app.connection_for_write(), auto_declare=False), set()  # type: ignore[no-untyped-call]

    def _release(self, producer: Producer, declared: set[str]) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._idle.append((producer, declared))

    def _after_fork(self) -> None:
        """A forked child uses none of its parent's connections or templates
        (the parent's are its own; a template names the process, `origin`)."""
        if self._pid != os.getpid():
            # a new lock first: a thread of the parent (its sweeper) may have
            # held the old one at the fork, and no thread here would release it
            self._lock = threading.Lock()
            with self._lock:
                self._pid = os.getpid()
                self._idle = []
                self._templates = {}


def _close_quietly(producer: Producer) -> None:
    try:
        producer.connection.close()
    except Exception:  # noqa: BLE001 - it is dropped anyway
        pass
