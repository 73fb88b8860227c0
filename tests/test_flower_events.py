"""What Flower sees. Workers do not send task events by default (they cost
the worker's main process about as much as the rest of a workflow's
bookkeeping); Flower turns them on with the `enable_events` broadcast it sends
every few seconds. This test does what Flower does, with Celery's own event
receiver, against a real worker on Redis."""

from __future__ import annotations

import threading

import pytest
from celery import Celery, signature

from durable import Durable

from tests.harness import Worker, wait_for


@pytest.fixture
def backend(pg_backend):
    return pg_backend


def _worker_with_heartbeats(backend, effects_dir, tmp_path, queues: str) -> Worker:
    """Started like docker-compose's workers: heartbeats on, so the event
    dispatcher is up (sending worker events only) and can be told to send task events."""
    worker = Worker(backend.env(effects_dir), tmp_path / "worker.log", queues=queues)
    worker.args = [a for a in worker.args if a not in ("--without-heartbeat", "--without-gossip")]
    return worker.start()


def _listen(broker_url: str) -> tuple[Celery, list[dict], threading.Event, threading.Thread]:
    """What Flower does: capture every event, in a thread, until told to stop."""
    monitor = Celery("flower-like", broker=broker_url)
    seen: list[dict] = []
    stop = threading.Event()

    def receive() -> None:
        with monitor.connection() as conn:
            receiver = monitor.events.Receiver(conn, handlers={"*": seen.append})
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except (TimeoutError, OSError):  # OSError: socket.timeout from the idle drain
                    continue

    listener = threading.Thread(target=receive, daemon=True)
    listener.start()
    return monitor, seen, stop, listener


def test_flower_sees_durable_tasks_by_name_and_workflow_id(backend, client, effects_dir, tmp_path):
    worker = _worker_with_heartbeats(backend, effects_dir, tmp_path, "celery")
    monitor, seen, stop, listener = _listen(backend.broker_url)
    try:
        # Flower broadcasts enable_events periodically; the first broadcast
        # may come before the worker listens, so do the same until events flow.
        handles = []

        def events_flowing() -> bool:
            monitor.control.enable_events()
            handles.append(client.enqueue("ten_steps"))
            return any(e.get("type") == "task-succeeded" for e in seen)

        wait_for(events_flowing, 30, "task events after enable_events", interval_s=1.0)
        handle = handles[-1]
        handle.result(timeout=30)
        wait_for(lambda: any(e.get("type") == "task-succeeded" and e.get("uuid") in _uuids(seen, handle.workflow_id)
                             for e in seen), 45, "the last workflow's task-succeeded event")  # 15 s ran out at load 13
    finally:
        stop.set()
        listener.join(timeout=5)
        worker.stop()
    received = [e for e in seen if e.get("type") == "task-received" and handle.workflow_id in e.get("args", "")]
    assert received, [e.get("type") for e in seen]
    assert received[0]["name"] == "durable:ten_steps"
    assert repr(handle.workflow_id) in received[0]["args"]


def _uuids(events: list[dict], workflow_id: str) -> set[str]:
    return {e["uuid"] for e in events if e.get("type") == "task-received" and workflow_id in e.get("args", "")}


def test_flower_sees_dispatched_steps_by_name_and_failed_executions_as_failed(
    backend, client, effects_dir, tmp_path
):
    worker = _worker_with_heartbeats(backend, effects_dir, tmp_path, "celery,heavy")
    monitor, seen, stop, listener = _listen(backend.broker_url)
    try:
        def events_flowing() -> bool:
            monitor.control.enable_events()
            client.enqueue("ten_steps").result(timeout=30)
            return any(e.get("type") == "task-succeeded" for e in seen)

        wait_for(events_flowing, 30, "task events after enable_events", interval_s=1.0)
        ok = client.enqueue("heavy_and_light")
        failing = client.enqueue("fails_in_a_step")
        ok.result(timeout=30)
        with pytest.raises(ValueError, match="refused on purpose"):
            failing.result(timeout=30)

        def names_of(workflow_id: str, kind: str) -> list[str]:
            uuids = {e["uuid"]: e["name"] for e in seen
                     if e.get("type") == "task-received" and repr(workflow_id) in e.get("args", "")}
            return [uuids[e["uuid"]] for e in seen if e.get("type") == kind and e.get("uuid") in uuids]

        # while task events are on, each link of a chain is a task of its own
        # (not run in the delivery of the link before: local_links.py)
        chain = Durable(settings=backend.settings()).chain(
            signature("dispatch.stage", args=("img", "a", "flower-chain")),
            signature("dispatch.stage", args=("b", "flower-chain")),
            signature("dispatch.stage", args=("c", "flower-chain")),
        ).start(workflow_id="flower-chain")
        assert chain.result(timeout=30) == "img>a>b>c"
        links = ["flower-chain-0", "flower-chain-0-1", "flower-chain-0-2"]

        step_id = f"{ok.workflow_id}-1"
        wait_for(lambda: names_of(step_id, "task-succeeded"), 15, "the dispatched step's task-succeeded")
        wait_for(lambda: names_of(failing.workflow_id, "task-failed"), 15, "the failed workflow's task-failed")
        wait_for(lambda: all(names_of(link, "task-succeeded") for link in links), 15, "each link's task-succeeded")
    finally:
        stop.set()
        listener.join(timeout=5)
        worker.stop()
    assert names_of(step_id, "task-succeeded") == ["durable.step:heavy_work"]
    assert [names_of(link, "task-succeeded") for link in links] == [["dispatch.stage"]] * 3
    assert names_of(f"{failing.workflow_id}-0", "task-failed") == ["durable.step:refuses"]
    assert "durable:fails_in_a_step" in names_of(failing.workflow_id, "task-failed")
    failed = [e for e in seen if e.get("type") == "task-failed"]
    assert any("refused on purpose" in e.get("exception", "") for e in failed), failed
    # the execution that suspended on its step is a success that says so
    suspended = [e for e in seen if e.get("type") == "task-succeeded" and "suspended" in e.get("result", "")]
    assert suspended
