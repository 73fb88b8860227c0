"""Which links of a static chain a worker runs at once, in the delivery of
the link before, instead of publishing them (the runner's `local_links`;
see runner.py). Like Temporal's eager activities: a worker that would
receive the next link's message anyway runs it without the broker hop.

A link runs here only when nothing Celery would apply to its message is
lost by skipping the message:

- this worker consumes the link's queue;
- neither the link's task nor the one whose message carries the delivery
  has a time or rate limit (Celery applies those per message), nor does the
  worker (`--time-limit`);
- nobody watches task events. Flower turns them on in every worker it
  sees (`enable_events`); then each link is published, and shows in Flower
  as a task of its own, as before;
- the worker consumes the queues it started with: after an `add_consumer`
  or `cancel_consumer` (an operator draining a queue off a pool) every
  link is published, so Celery's routing alone decides where each runs.

The worker's main process reads the last two from its consumer every
PoolWatch tick and hands them to the pool children through one shared byte.
"""

from __future__ import annotations

import mmap
from typing import Any, Callable, Collection

from celery import Celery

from .dispatch import celery_task_name

LIMIT_OPTIONS = ("rate_limit", "time_limit", "soft_time_limit")


def task_events_on(consumer: Any) -> bool:
    """Whether a worker's consumer sends task events now (`-E`, or turned
    on by a remote `enable_events`, as Flower does)."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if dispatcher is None or not dispatcher.enabled:
        return False
    groups = dispatcher.groups
    return not groups or "task" in groups


def consumed_queues(consumer: Any) -> frozenset[str] | None:
    """The queues a worker's consumer takes messages from now, or None
    while it has no task consumer (starting, or reconnecting)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return None
    return frozenset(queue.name for queue in task_consumer.queues)


def publish_every_link(consumer: Any, queues_at_start: frozenset[str]) -> bool:
    """Whether every link must go through the broker now: task events are
    watched, or the consumed queues changed at runtime."""
    if task_events_on(consumer):
        return True
    queues = consumed_queues(consumer)
    return queues is not None and queues != queues_at_start


class SharedFlag:
    """One byte that the worker's main process writes and the pool children
    forked after it read (an anonymous shared mapping survives fork)."""

    def __init__(self, on: bool):
        self._map = mmap.mmap(-1, 1)
        self.set(on)

    def set(self, on: bool) -> None:
        if self._map[0] != on:
            self._map[0] = 1 if on else 0

    def __call__(self) -> bool:
        return self._map[0] == 1


class LocalLinks:
    def __init__(
        self, app: Celery, queues: Collection[str], publish_all: Callable[[], bool],
        worker_time_limited: bool = False,
    ):
        self.app = app
        self.queues = frozenset(queues)
        self.publish_all = publish_all
        self.worker_time_limited = worker_time_limited
        self._limited: dict[str, bool] = {}  # by workflow name, once per process

    @classmethod
    def of_worker(cls, worker: Any, publish_all: Callable[[], bool]) -> "LocalLinks":
        return cls(
            worker.app, list(worker.app.amqp.queues.consume_from), publish_all,
            worker_time_limited=bool(worker.time_limit or worker.soft_time_limit),
        )

    def runs_here(self, name: str, queue: str, carrier: str) -> bool:
        return (
            queue in self.queues and not self.worker_time_limited
            and not self._has_limits(name) and not self._has_limits(carrier)
            and not self.publish_all()
        )

    def _has_limits(self, workflow_name: str) -> bool:
        limited = self._limited.get(workflow_name)
        if limited is None:
            task = self.app.tasks.get(celery_task_name(workflow_name))
            conf = self.app.conf
            limited = self._limited[workflow_name] = task is None or any(
                getattr(task, option, None) for option in LIMIT_OPTIONS
            ) or bool(conf.task_time_limit or conf.task_soft_time_limit or conf.task_default_rate_limit)
        return limited
