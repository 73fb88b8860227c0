"""The module-level messaging helpers: `durable.send`, `recv`, `set_event`,
`get_event`.

In workflow code each is a checkpointed step (`messaging.py`). Inside a
step, `send` and `get_event` are the step's own side effect, through the
worker that runs it. Anywhere else they go through the process's only
`Durable` app (call `dur.send(...)` or `client.send(...)` when there are
several). `recv` and `set_event` belong to a workflow only.
"""

from __future__ import annotations

from typing import Any

from . import mailbox
from .app import known_apps
from .client import Management
from .context import current_execution, current_step, in_workflow_code
from .engine import Execution
from .errors import NotInWorkflowError
from .mailbox import DEFAULT_TIMEOUT_SECONDS


def send(workflow_id: str, message: Any, topic: str | None = None) -> None:
    """Send a durable message to a workflow. In a workflow: a checkpointed,
    exactly-once step. Elsewhere: through the process's only `Durable` app
    (or call `dur.send(...)` / `client.send(...)`)."""
    execution = in_workflow_code()
    if execution is not None:
        execution.send(workflow_id, message, topic)
        return
    step_execution = _running_step()
    if step_execution is not None:
        ex = step_execution
        mailbox.send(
            ex.store, ex.dispatcher, ex.settings, workflow_id, message, topic,
            sender_workflow_id=ex.workflow_id, clock=ex.clock,
        )
        return
    _only_app("send").send(workflow_id, message, topic)


def recv(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_SECONDS) -> Any:
    """The oldest unconsumed message sent to this workflow on `topic`
    (consumed exactly once), waiting up to `timeout` seconds (None: no
    limit); None when none came in time."""
    execution = in_workflow_code()
    if execution is None:
        raise NotInWorkflowError(_only_in_workflow("recv"))
    return execution.recv(topic, timeout)


def set_event(key: str, value: Any) -> None:
    """Publish `key` = `value` for this workflow; the latest value wins."""
    execution = in_workflow_code()
    if execution is None:
        raise NotInWorkflowError(_only_in_workflow("set_event"))
    execution.set_event(key, value)


def get_event(workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT_SECONDS) -> Any:
    """The latest value workflow `workflow_id` set for `key`, waiting up to
    `timeout` seconds for one to be set; None when none was. In a workflow
    the outcome is checkpointed."""
    execution = in_workflow_code()
    if execution is not None:
        return execution.get_event(workflow_id, key, timeout)
    step_execution = _running_step()
    if step_execution is not None:
        ex = step_execution
        return mailbox.wait_for_event(ex.store, workflow_id, key, timeout, clock=ex.clock)
    return _only_app("get_event").get_event(workflow_id, key, timeout)


def _running_step() -> Execution | None:
    """The execution whose step is running here, if any."""
    execution = current_execution()
    return execution if isinstance(execution, Execution) and current_step() is not None else None


def _only_in_workflow(what: str) -> str:
    where = "inside a step" if current_step() is not None else "outside a workflow"
    return (
        f"durable.{what}() was called {where}: it can only be called from a workflow "
        "function (decorated with @dur.workflow), where it is checkpointed"
    )


def _only_app(what: str) -> Management:
    apps = known_apps()
    if len(apps) == 1:
        return apps[0]
    raise NotInWorkflowError(
        f"durable.{what}() outside a workflow needs to know which app to use, and this "
        f"process has {len(apps)} Durable apps: call dur.{what}(...) on your Durable app "
        f"or DurableClient instead"
    )
