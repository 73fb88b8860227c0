"""Recording the workflows' parameters runs in a thread of the worker's main
process, which forks pool children: building the schemas imports pydantic,
and a child forked while that thread holds an import's lock would hang at
its own import of that module. So a fork waits for all of it, not only for
the database write."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import durable.celery_binding as binding
from durable import Durable, Settings


def test_a_fork_waits_while_the_parameters_are_built_and_written(tmp_path: Path, monkeypatch: Any) -> None:
    dur = Durable(settings=Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}"))

    @dur.workflow(name="rec.wf")
    def wf(n: int) -> int:
        return n

    building = threading.Event()
    release = threading.Event()
    real = binding.dumps_schema

    def slow_dumps_schema(parameters: Any) -> str:
        building.set()
        release.wait(10)
        return real(parameters)

    monkeypatch.setattr(binding, "dumps_schema", slow_dumps_schema)
    recorder = threading.Thread(target=binding.record_inputs, args=(dur.runner,))
    recorder.start()
    assert building.wait(10)
    forked = threading.Event()

    def fork() -> None:
        pid = os.fork()  # what billiard does for a replacement child
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked.set()

    forker = threading.Thread(target=fork)
    forker.start()
    assert not forked.wait(0.5), "a child was forked while the schemas were being built"
    release.set()
    recorder.join(10)
    assert forked.wait(10)
    forker.join(10)
    with dur.store.db.engine.connect() as conn:
        recorded = conn.exec_driver_sql("SELECT name FROM durable_workflow_schemas").scalars().all()
    assert "rec.wf" in recorded
