"""Durable messages and events (docs/concepts.md), against real worker processes,
once per store dialect: send/recv exactly once across replays and kills,
timeouts stable across suspension, set_event waking get_event waiters, bad
input writing nothing, and the rows' life with delete and fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import durable
from durable import DurableClient, Settings, Status
from durable.client import new_workflow_row
from durable.errors import SerializationError, WorkflowNotFoundError
from durable.messaging import NotInWorkflowError
from durable.schema import event_waiters
from tests.harness import REPO, Backend, Worker, wait_for
from tests.workflows import effects


def client_for(backend: Backend) -> DurableClient:
    return DurableClient(settings=Settings(
        home=str(backend.home), database_url=backend.database_url, broker_url=backend.broker_url,
        redelivery_seconds=3,
    ))


@pytest.fixture
def client(backend: Backend) -> DurableClient:
    return client_for(backend)


@pytest.fixture
def worker_factory(backend: Backend, effects_dir: Path, tmp_path: Path):
    started: list[Worker] = []

    def start(**kwargs) -> Worker:
        worker = Worker(backend.env(effects_dir), tmp_path / f"worker{len(started)}.log", **kwargs)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill_all()  # the test is over: no warm shutdown to wait for


def suspended_in(client: DurableClient, workflow_id: str, step_name: str) -> bool:
    """The workflow recorded `step_name` and let go of its lease (suspended)."""
    row = client.store.workflow_row(workflow_id)
    steps = [s.name for s in client.list_steps(workflow_id)]
    return row is not None and row["lease_owner"] is None and step_name in steps


def test_send_from_client_then_recv_in_workflow_by_topic(backend, worker_factory, client):
    worker_factory()
    handle = client.enqueue("recv_many", args=[2], kwargs={"topic": "orders"})
    client.send(handle.workflow_id, "ignored: other topic", topic="other")
    client.send(handle.workflow_id, {"order": 1}, topic="orders")
    client.send(handle.workflow_id, {"order": 2}, topic="orders")
    assert handle.result(timeout=60) == [{"order": 1}, {"order": 2}]
    rows = client.store.list_messages(handle.workflow_id)
    assert [(r["topic"], r["consumed_at_ms"] is not None) for r in rows] == [
        ("other", False), ("orders", True), ("orders", True)
    ]
    names = [s.name for s in client.list_steps(handle.workflow_id)]
    assert names.count("durable.recv") == 2


def test_recv_times_out_with_none_inline_and_after_suspending(backend, worker_factory, client):
    worker_factory()
    short = client.enqueue("recv_one", kwargs={"timeout": 0.3})  # polls in the worker
    long = client.enqueue("recv_one", kwargs={"timeout": 4.0})  # > inline_wait_max: suspends
    assert short.result(timeout=60) is None
    wait_for(lambda: suspended_in(client, long.workflow_id, "durable.recv.deadline"), 30, "recv to suspend")
    assert long.result(timeout=60) is None
    steps = client.list_steps(long.workflow_id)
    assert [s.name for s in steps] == ["durable.recv.deadline", "durable.recv"]
    assert steps[1].output is None and steps[1].status == "SUCCESS"
    # the deadline was recorded once and kept across the suspension and replay
    assert steps[1].completed_at.timestamp() * 1000 >= steps[0].output


def test_suspended_recv_is_woken_by_a_later_send(backend, worker_factory, client):
    worker_factory()
    handle = client.enqueue("recv_one", kwargs={"timeout": 300.0})
    wait_for(lambda: suspended_in(client, handle.workflow_id, "durable.recv.deadline"), 30, "recv to suspend")
    client.send(handle.workflow_id, ["wake", "up"])
    # woken by the send, far before its 300 s deadline
    assert handle.result(timeout=60) == ["wake", "up"]
    assert handle.status().recovery_attempts == 0


def test_send_from_workflow_is_exactly_once_across_kill_and_replay(backend, worker_factory, client, effects_dir):
    worker = worker_factory()
    receiver = client.enqueue("recv_many", args=[4], kwargs={"topic": "t", "timeout": 120.0})
    sender = client.enqueue("send_then_pause", args=[receiver.workflow_id, ["a", {"b": 2}, None], 30.0],
                            kwargs={"topic": "t"})
    wait_for(lambda: any(k == "after_send" for k, _, _ in effects(sender.workflow_id)), 60, "the sender to pause")
    (_, child_pid, _), = [e for e in effects(sender.workflow_id) if e[0] == "after_send"]
    assert child_pid in worker.children()
    os.kill(child_pid, signal.SIGKILL)  # the sender's three sends are replayed by its recovery
    assert sender.result(timeout=90) == 4
    assert receiver.result(timeout=60) == ["a", {"b": 2}, None, "last"]
    rows = client.store.list_messages(receiver.workflow_id)
    assert len(rows) == 4 and all(r["consumed_at_ms"] is not None for r in rows)
    assert [r["message_id"] for r in rows] == [
        f"wf:{sender.workflow_id}:{i}" for i in (0, 1, 2, 5)  # 3: the pause step, 4: the sleep
    ]
    assert sender.status().recovery_attempts == 1


def test_message_consumed_once_when_worker_dies_right_after_recv(backend, worker_factory, client, effects_dir):
    worker = worker_factory()
    handle = client.enqueue("recv_then_pause", args=[30.0])
    client.send(handle.workflow_id, "first")
    client.send(handle.workflow_id, "second")
    wait_for(lambda: any(k == "after_recv" for k, _, _ in effects(handle.workflow_id)), 60, "the pause after recv")
    (_, child_pid, _), = [e for e in effects(handle.workflow_id) if e[0] == "after_recv"]
    assert child_pid in worker.children()
    os.kill(child_pid, signal.SIGKILL)
    assert handle.result(timeout=90) == ["first", "second"]
    assert handle.status().recovery_attempts == 1
    rows = client.store.list_messages(handle.workflow_id)
    recv_steps = [s.step_id for s in client.list_steps(handle.workflow_id) if s.name == "durable.recv"]
    assert [r["consumed_by_step_id"] for r in rows] == recv_steps  # each by its own recv, once


def test_events_from_workflows_to_a_client_and_a_waiting_workflow(backend, worker_factory, client):
    worker_factory()
    publisher_id = "publisher-1"
    # the waiter starts before its target exists, and suspends (timeout > inline wait)
    waiter = client.enqueue("wait_for_event", args=[publisher_id, "stage"], kwargs={"timeout": 300.0})
    wait_for(lambda: suspended_in(client, waiter.workflow_id, "durable.get_event.deadline"), 30,
             "get_event to suspend")
    assert client.get_event(publisher_id, "stage", timeout=0.2) is None
    publisher = client.enqueue("publish_events", args=["stage", ["started", {"n": 2}]],
                               workflow_id=publisher_id)
    assert publisher.result(timeout=60) == "published"
    # woken by the set_event, far before its 300 s deadline; the latest value
    assert waiter.result(timeout=60) in ("started", {"n": 2})
    assert client.get_event(publisher_id, "stage", timeout=5) == {"n": 2}
    assert client.get_event(publisher_id, "never-set", timeout=0.2) is None
    # another workflow that asks after the event exists gets it at once
    late = client.enqueue("wait_for_event", args=[publisher_id, "stage"], kwargs={"timeout": 1.0})
    assert late.result(timeout=60) == {"n": 2}
    assert [s.name for s in client.list_steps(late.workflow_id)] == ["durable.get_event"]
    with client.store.db.begin() as conn:  # woken waiters are unregistered
        assert conn.execute(event_waiters.select()).all() == []


def test_client_get_event_polls_until_the_event_is_set(backend, worker_factory, client):
    worker_factory()
    publisher = client.enqueue("publish_events", args=["ready", [True]], kwargs={"then_wait_seconds": 3.0})
    assert client.get_event(publisher.workflow_id, "ready", timeout=60) is True
    assert publisher.status().status in (Status.PENDING, Status.SUCCESS)
    assert publisher.result(timeout=60) == "published"


def test_get_event_in_a_workflow_times_out_with_none(backend, worker_factory, client):
    worker_factory()
    handle = client.enqueue("wait_for_event", args=["nobody", "k"], kwargs={"timeout": 3.0})
    assert handle.result(timeout=60) is None
    assert [s.name for s in client.list_steps(handle.workflow_id)] == [
        "durable.get_event.deadline", "durable.get_event"
    ]


def test_bad_input_raises_and_writes_nothing(backend, client):
    target = client.enqueue("recv_one", workflow_id="target")  # no worker: stays ENQUEUED
    with pytest.raises(WorkflowNotFoundError):
        client.send("no-such-workflow", "hello")
    with pytest.raises(SerializationError):
        client.send(target.workflow_id, threading.Lock())
    with pytest.raises(ValueError):
        client.send(target.workflow_id, "x", topic="")
    with pytest.raises(ValueError):
        client.get_event(target.workflow_id, "k", timeout=-1)
    with pytest.raises(ValueError):
        client.get_event(target.workflow_id, "", timeout=0)
    assert client.store.list_messages(target.workflow_id) == []
    assert client.store.list_messages("no-such-workflow") == []
    # recv and set_event belong to a workflow
    with pytest.raises(NotInWorkflowError, match="outside a workflow"):
        durable.recv(timeout=0)
    with pytest.raises(NotInWorkflowError, match="outside a workflow"):
        durable.set_event("k", 1)
    # an idempotency key makes a retried send store one message
    client.send(target.workflow_id, "once", idempotency_key="k1")
    client.send(target.workflow_id, "once", idempotency_key="k1")
    assert [r["payload"] for r in client.store.list_messages(target.workflow_id)] == ['"once"']


def test_bad_input_inside_workflows(backend, worker_factory, client):
    worker_factory()
    receiver = client.enqueue("recv_one", kwargs={"timeout": 120.0})
    handle = client.enqueue("send_bad_input", args=["no-such-workflow", receiver.workflow_id])
    assert handle.result(timeout=60) == {
        "missing": "WorkflowNotFoundError", "unserializable": "SerializationError"
    }
    assert receiver.result(timeout=60) == "ok"  # the only message written
    assert len(client.store.list_messages(receiver.workflow_id)) == 1
    steps = client.list_steps(handle.workflow_id)
    assert [(s.name, s.status) for s in steps] == [
        ("durable.send", "ERROR"), ("durable.sleep", "SUCCESS"), ("durable.send", "SUCCESS")
    ]
    misuse = client.enqueue("misuse_in_step").result(timeout=60)
    assert set(misuse) == {"recv", "set_event"} and all("inside a step" in m for m in misuse.values())


def test_send_and_get_event_from_a_step_and_to_an_ended_workflow(backend, worker_factory, client):
    worker_factory()
    ended = client.enqueue("fails", args=["boom"])
    with pytest.raises(ValueError):
        ended.result(timeout=60)
    # stored anyway, as DBOS does: a resumed or inspected workflow can read it
    client.send(ended.workflow_id, "late")
    assert [r["payload"] for r in client.store.list_messages(ended.workflow_id)] == ['"late"']
    receiver = client.enqueue("recv_one", kwargs={"topic": "steps", "timeout": 120.0})
    assert client.enqueue("send_from_step", args=[receiver.workflow_id]).result(timeout=60) == "no event"
    assert receiver.result(timeout=60) == "from a step"


def test_module_level_send_needs_exactly_one_app(backend, client):
    """Outside a workflow, durable.send / durable.get_event use the process's
    only Durable app, and say what to do when there is not exactly one."""
    target = client.enqueue("recv_one", workflow_id="module-level-target")
    script = f"""
import durable
from durable import Durable, Settings
from durable.messaging import NotInWorkflowError
from durable.schema import event_waiters

def settings():
    return Settings(home={str(backend.home)!r}, database_url={backend.database_url!r},
                    broker_url={backend.broker_url!r})

try:
    durable.send({target.workflow_id!r}, "none yet")
except NotInWorkflowError as exc:
    assert "0 Durable apps" in str(exc) and "dur.send" in str(exc), exc
dur = Durable(settings=settings())
durable.send({target.workflow_id!r}, "via the only app")
assert durable.get_event({target.workflow_id!r}, "k", timeout=0.1) is None
other = Durable(settings=settings())
try:
    durable.send({target.workflow_id!r}, "ambiguous")
except NotInWorkflowError as exc:
    assert "2 Durable apps" in str(exc), exc
else:
    raise SystemExit("no error with two apps")
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("DURABLE_IMPORTS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert [r["payload"] for r in client.store.list_messages(target.workflow_id)] == ['"via the only app"']


def test_messages_and_events_are_deleted_with_their_workflow_and_fork_gets_events(backend, client):
    """Store level, no worker: the rows' life with delete_workflows and fork."""
    store = client.store
    now = 1_800_000_000_000
    row = new_workflow_row(client.settings, "publish_events", [], {}, workflow_id="src")
    store.insert_workflow(row)
    store.insert_workflow(new_workflow_row(client.settings, "wait_for_event", [], {}, workflow_id="waiter"))
    claim = store.claim("src", "owner", now, 60_000)
    for step_id, value in ((0, '"one"'), (1, '"two"')):
        checkpoint = dict(workflow_id="src", step_id=step_id, name="durable.set_event", status="SUCCESS",
                          output='{"key":"k","value":%s}' % value, attempts=1, started_at_ms=now)
        assert store.set_event("src", "k", value, claim.epoch, checkpoint, now) == (True, [])
    # a fenced-out execution (old epoch) publishes nothing
    stale = dict(workflow_id="src", step_id=2, name="durable.set_event", status="SUCCESS",
                 output='{"key":"k","value":"stale"}', attempts=1, started_at_ms=now)
    assert store.set_event("src", "k", '"stale"', claim.epoch - 1, stale, now) == (False, [])
    assert store.list_events("src") == {"k": '"two"'}
    client.send("src", "m1")
    assert store.read_event("other", "k", waiter_workflow_id="waiter", wait=True, now_ms=now) is None

    fork = client.fork("src", from_step=1, new_workflow_id="fork")
    assert store.list_events(fork.workflow_id) == {"k": '"one"'}  # as of the fork point
    assert store.list_messages(fork.workflow_id) == []  # messages stay with the source
    assert client.get_event("fork", "k", timeout=0) == "one"

    store.delete_workflows(["src", "waiter"])
    assert store.list_events("src") == {} and store.list_messages("src") == []
    with store.db.begin() as conn:
        assert conn.execute(event_waiters.select()).all() == []
