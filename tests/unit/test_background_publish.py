"""A start's message is published after start() returns (background_publish.py):
in order, all of it at exit, and never twice across a fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from durable.background_publish import BackgroundDispatcher

REPO = Path(__file__).resolve().parents[2]


class Recording:
    def __init__(self, gate: threading.Event | None = None, path: Path | None = None):
        self.gate = gate
        self.path = path
        self.published: list[str] = []

    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        if self.gate is not None:
            self.gate.wait(10)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {workflow_id}\n")
        self.published.append(workflow_id)
        return True


def test_publish_returns_before_the_broker_is_rung_and_flush_waits_for_it():
    gate = threading.Event()
    inner = Recording(gate)
    dispatcher = BackgroundDispatcher(inner)
    for i in range(5):
        assert dispatcher.publish(f"wf-{i}", "w", "celery") is True
    assert inner.published == []  # the broker is blocked: nothing could have gone out yet
    assert dispatcher.flush(timeout=0.2) is False
    gate.set()
    assert dispatcher.flush(timeout=10) is True
    assert inner.published == [f"wf-{i}" for i in range(5)]


def test_a_failed_publish_does_not_stop_the_next():
    class Flaky(Recording):
        def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
            if workflow_id == "bad":
                raise ConnectionError("broker down")
            return super().publish(workflow_id, name, queue, priority)

    inner = Flaky()
    dispatcher = BackgroundDispatcher(inner)
    for wid in ("a", "bad", "b"):
        dispatcher.publish(wid, "w", "celery")
    assert dispatcher.flush(timeout=10)
    assert inner.published == ["a", "b"]


def test_a_process_that_exits_right_after_starting_still_publishes(tmp_path: Path):
    out = tmp_path / "published"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from durable.background_publish import BackgroundDispatcher

        class Slow:
            def publish(self, workflow_id, name, queue, priority=0):
                time.sleep(0.05)
                with open({str(out)!r}, "a") as f:
                    f.write(workflow_id + "\\n")
                return True

        dispatcher = BackgroundDispatcher(Slow())
        for i in range(10):
            dispatcher.publish(f"wf-{{i}}", "w", "celery")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=60)
    assert out.read_text().split() == [f"wf-{i}" for i in range(10)]


def test_a_forked_child_does_not_publish_its_parents_pending_messages(tmp_path: Path):
    out = tmp_path / "published"
    gate = threading.Event()
    dispatcher = BackgroundDispatcher(Recording(gate, out))
    dispatcher.publish("parent-1", "w", "celery")  # its thread is blocked on the gate
    pid = os.fork()
    if pid == 0:  # the child: no gate is ever set here, but its own thread is new
        code = 1
        try:
            dispatcher.inner = Recording(path=out)
            dispatcher.publish("child-1", "w", "celery")
            code = 0 if dispatcher.flush(timeout=10) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    gate.set()
    assert dispatcher.flush(timeout=10)
    lines = sorted(out.read_text().splitlines())
    assert lines == sorted([f"{pid} child-1", f"{os.getpid()} parent-1"])
