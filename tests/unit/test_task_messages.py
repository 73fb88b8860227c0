"""Durable's messages built from templates (task_messages.py) are the
messages Celery's send_task would publish: same headers, properties, body
and publish options, but for the task ID and what follows from it."""

from __future__ import annotations

import signal
import time
from typing import Any
from unittest import mock

import pytest
from celery import Celery, signals
from kombu import Producer

from durable.dispatch import CeleryDispatcher


def recorded_publishes(app: Celery, fast: bool, *publishes: tuple[str, str, str, int]) -> list[dict[str, Any]]:
    """What CeleryDispatcher.publish hands kombu for each (workflow ID, name, queue, priority)."""
    seen: list[dict[str, Any]] = []

    def publish(self: Producer, body: Any, **kwargs: Any) -> None:
        seen.append(dict(kwargs, body=body))

    dispatcher = CeleryDispatcher(app)
    with mock.patch.object(Producer, "publish", publish), \
            mock.patch.object(dispatcher.messages, "usable", lambda: fast):
        for workflow_id, name, queue, priority in publishes:
            assert dispatcher.publish(workflow_id, name, queue, priority)
    return seen


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without its task ID (and the root ID, the ID by default)."""
    message = dict(message)
    headers = dict(message.pop("headers"))
    assert headers.pop("id") == message.pop("correlation_id") == headers.pop("root_id")
    message.pop("declare", None)  # the fast path declares once per producer instead
    return dict(message, headers=headers)


@pytest.fixture
def app() -> Celery:
    app = Celery("durable", broker="memory://")
    app.conf.task_routes = {"durable.task:routed": {"queue": "elsewhere", "exchange": "ex"}}

    @app.task(name="durable.task:limited", time_limit=30, soft_time_limit=20, shared=False)
    def limited() -> None: ...

    app.finalize()  # as in a worker: send_task sees the task's options
    return app


PUBLISHES = [
    ("wf-1", "orders", "celery", 0),
    ("wf-2", "durable.step:embed", "gpu", 3),
    ("wf-3", "durable.task:limited", "celery", 0),
    ("wf-4", "durable.task:routed", "celery", 9),
    ("wf-5", "orders", "celery", 0),  # a template's second use
]


def test_same_message_as_send_task(app: Celery) -> None:
    celery_made = recorded_publishes(app, False, *PUBLISHES)
    templated = recorded_publishes(app, True, *PUBLISHES)
    assert len(templated) == len(celery_made) == len(PUBLISHES)
    for ours, theirs in zip(templated, celery_made):
        assert comparable(ours) == comparable(theirs)
    assert templated[2]["headers"]["timelimit"] == [30, 20]
    assert templated[1]["headers"]["task"] == "durable.step:embed"
    assert templated[1]["headers"]["argsrepr"] == "('wf-2', 'durable.step:embed')"
    assert len({m["headers"]["id"] for m in templated}) == len(PUBLISHES)


def test_a_task_publishing_is_its_parent(app: Celery) -> None:
    parent = mock.Mock()
    parent.request.id, parent.request.root_id = "parent-task", "root-task"
    with mock.patch.object(Celery, "current_worker_task", parent):
        ours = recorded_publishes(app, True, PUBLISHES[0])[0]
        theirs = recorded_publishes(app, False, PUBLISHES[0])[0]
    for message in (ours, theirs):
        assert message["headers"]["parent_id"] == "parent-task"
        assert message["headers"]["root_id"] == "root-task"


def test_publish_signal_receivers_get_celerys_path(app: Celery) -> None:
    dispatcher = CeleryDispatcher(app)
    assert dispatcher.messages.usable()

    def receiver(**kwargs: Any) -> None: ...

    signals.before_task_publish.connect(receiver)
    try:
        assert not dispatcher.messages.usable()
    finally:
        signals.before_task_publish.disconnect(receiver)
    app.conf.task_send_sent_event = True
    assert CeleryDispatcher(app).messages.template("durable.run_workflow", "orders", "celery", 0, "x") is None


def test_a_child_forked_while_another_thread_publishes_can_publish(app: Celery) -> None:
    """The sweeper publishes from its own thread while the pool forks: a
    child forked while that thread held the publisher's lock must not wait
    for it (no thread of the child would release it)."""
    import os

    dispatcher = CeleryDispatcher(app)
    dispatcher.messages._lock.acquire()  # as the sweeper thread, mid-publish
    try:
        pid = os.fork()
        if pid == 0:  # the child: its first publish goes through its own lock
            code = 1
            try:
                with mock.patch.object(Producer, "publish", lambda self, body, **kwargs: None):
                    code = 0 if dispatcher.publish("wf-child", "orders", "celery", 0) else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child waited for a lock its parent's thread held")
    finally:
        dispatcher.messages._lock.release()
