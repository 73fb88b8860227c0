"""Two Durable apps in one process (a web app with two databases, a test
suite): each app's Celery task runs that app's workflows, on its database."""

from __future__ import annotations

from pathlib import Path

from durable import Durable, Settings, Status
from durable.dispatch import RUN_TASK


def test_each_app_runs_its_own_workflows_on_its_own_database(tmp_path: Path) -> None:
    first = Durable(settings=Settings(home=str(tmp_path / "first")))
    second = Durable(settings=Settings(home=str(tmp_path / "second")))

    @first.workflow(name="greet")
    def greet_first(name: str) -> str:
        return f"first: {name}"

    @second.workflow(name="greet")
    def greet_second(name: str) -> str:
        return f"second: {name}"

    for app in (first, second):
        app.migrate()
    handles = [greet_first.start("a"), greet_second.start("b")]
    for app, handle in zip((first, second), handles):
        task = app.celery.tasks[RUN_TASK]  # the task a worker of this app runs each message with
        assert task.durable_runner is app.runner
        assert task.durable_runner.execute(handle.workflow_id, "greet") == "executed"
    assert [first.get(handles[0].workflow_id).status, second.get(handles[1].workflow_id).status] == [
        Status.SUCCESS, Status.SUCCESS,
    ]
    assert first.get(handles[0].workflow_id).output == "first: a"
    assert second.get(handles[1].workflow_id).output == "second: b"
    for app in (first, second):
        app.store.db.dispose()
