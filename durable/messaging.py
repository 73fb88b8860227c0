"""Durable messages and events, with DBOS semantics.

    send(workflow_id, message, topic=None)   # from a workflow, a step or a client
    recv(topic=None, timeout=60.0)           # in a workflow: oldest unconsumed message, or None
    set_event(key, value)                    # in a workflow: publish key = value
    get_event(workflow_id, key, timeout=60.0)  # the latest value, or None

Inside a workflow each call is a checkpointed step (`durable.send`,
`durable.recv`, `durable.set_event`, `durable.get_event`): replay returns the
recorded outcome, so a message is never sent twice nor consumed twice. A
send's message ID is derived from (sender, step) and unique in the table; a
recv consumes its message and writes its checkpoint in one transaction fenced
by the lease epoch. A recv or get_event that must wait first records its
deadline as a step (`durable.recv.deadline`, `durable.get_event.deadline`),
so a replay waits for the same moment; a short wait polls in the worker,
a long one suspends the workflow until a send or set_event wakes it, or the
deadline passes. A recv or get_event that finds its answer at once records
no deadline (its reserved step number stays unused).

Outside a workflow (and inside a step, as the step's own side effect) `send`
and `get_event` go through the app: `dur.send(...)`, `client.send(...)`; the
module-level helpers find the app when exactly one `Durable` exists in the
process. `recv` and `set_event` belong to a workflow only.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from . import serialization as ser
from .context import current_execution, current_step
from .database import retry_while_unavailable
from .engine import Suspend, now_ms
from .errors import NotInWorkflowError, WorkflowNotFoundError
from .records import StepStatus
from .store import Doorbell

if TYPE_CHECKING:
    from .client import Management
    from .engine import Execution

SEND = "durable.send"
RECV = "durable.recv"
RECV_DEADLINE = "durable.recv.deadline"
SET_EVENT = "durable.set_event"
GET_EVENT = "durable.get_event"
GET_EVENT_DEADLINE = "durable.get_event.deadline"

DEFAULT_TIMEOUT_SECONDS = 60.0
_POLL_FIRST_SECONDS = 0.05
_POLL_MAX_SECONDS = 0.5
_UNSET: Any = object()


# --- module-level helpers -----------------------------------------------------------


def send(workflow_id: str, message: Any, topic: str | None = None) -> None:
    """Send a durable message to a workflow. In a workflow: a checkpointed,
    exactly-once step. Elsewhere: through the process's only `Durable` app
    (or call `dur.send(...)` / `client.send(...)`)."""
    execution = _in_workflow()
    if execution is not None:
        send_in_workflow(execution, workflow_id, message, topic)
        return
    _app("send").send(workflow_id, message, topic)


def recv(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT_SECONDS) -> Any:
    """The oldest unconsumed message sent to this workflow on `topic`
    (consumed exactly once), waiting up to `timeout` seconds (None: no
    limit); None when none came in time."""
    execution = _in_workflow()
    if execution is None:
        raise NotInWorkflowError(_only_in_workflow("recv"))
    return recv_in_workflow(execution, topic, timeout)


def set_event(key: str, value: Any) -> None:
    """Publish `key` = `value` for this workflow; the latest value wins."""
    execution = _in_workflow()
    if execution is None:
        raise NotInWorkflowError(_only_in_workflow("set_event"))
    set_event_in_workflow(execution, key, value)


def get_event(
    workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT_SECONDS
) -> Any:
    """The latest value workflow `workflow_id` set for `key`, waiting up to
    `timeout` seconds for one to be set; None when none was. In a workflow
    the outcome is checkpointed."""
    execution = _in_workflow()
    if execution is not None:
        return get_event_in_workflow(execution, workflow_id, key, timeout)
    return _app("get_event").get_event(workflow_id, key, timeout)


def _in_workflow() -> "Execution | None":
    """The execution when called from workflow code itself (not from a step)."""
    execution = current_execution()
    return execution if execution is not None and current_step() is None else None


def _only_in_workflow(what: str) -> str:
    where = "inside a step" if current_step() is not None else "outside a workflow"
    return (
        f"durable.{what}() was called {where}: it can only be called from a workflow "
        "function (decorated with @dur.workflow), where it is checkpointed"
    )


def _app(what: str) -> "Management":
    execution = current_execution()
    if execution is not None:  # inside a step: the worker's own app
        return execution.durable
    from .app import known_apps

    apps = known_apps()
    if len(apps) == 1:
        return apps[0]
    raise NotInWorkflowError(
        f"durable.{what}() outside a workflow needs to know which app to use, and this "
        f"process has {len(apps)} Durable apps: call dur.{what}(...) on your Durable app "
        f"or DurableClient instead"
    )


# --- through an app (clients, steps, workflows) ---------------------------------------


def send_from(
    management: "Management",
    workflow_id: str,
    message: Any,
    topic: str | None = None,
    idempotency_key: str | None = None,
) -> None:
    """`Management.send`. Workflow code calling it gets the checkpointed step;
    anywhere else the message is written at once (at least once: pass an
    `idempotency_key` to make a retried send store one message)."""
    execution = _in_workflow()
    if execution is not None and _same_database(execution, management):
        if idempotency_key is not None:
            raise ValueError(
                "idempotency_key is for sends from outside a workflow; "
                "a workflow's send is already exactly-once"
            )
        send_in_workflow(execution, workflow_id, message, topic)
        return
    _check_workflow_id(workflow_id)
    _check_name(topic, "topic", optional=True)
    if idempotency_key is not None:
        _check_name(idempotency_key, "idempotency_key")
    payload = ser.dumps(message)  # SerializationError before anything is written
    message_id = (
        f"key:{workflow_id}:{idempotency_key}" if idempotency_key is not None
        else f"client:{uuid.uuid4().hex}"
    )
    sender = current_execution()
    row = dict(
        message_id=message_id, workflow_id=workflow_id, topic=topic, payload=payload,
        serialization=ser.FORMAT, sender_workflow_id=sender.workflow_id if sender else None,
    )
    # a retry after a commit whose reply was lost finds its own message_id: "duplicate"
    status, doorbell = retry_while_unavailable(
        lambda: management.store.send_message(row, now_ms()), "sending a message"
    )
    if status == "not_found":
        raise WorkflowNotFoundError(workflow_id)
    _ring(management, [doorbell] if doorbell else [])


def get_event_from(
    management: "Management",
    workflow_id: str,
    key: str,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
) -> Any:
    """`Management.get_event`: checkpointed in workflow code, else polls the
    database until the event is set or `timeout` passes (then None)."""
    execution = _in_workflow()
    if execution is not None and _same_database(execution, management):
        return get_event_in_workflow(execution, workflow_id, key, timeout)
    _check_workflow_id(workflow_id)
    _check_name(key, "key")
    timeout = _check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while True:
        value = retry_while_unavailable(
            lambda: management.store.read_event(workflow_id, key), "reading an event"
        )
        if value is not None:
            return ser.loads(value)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            delay = min(delay, remaining)
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_SECONDS)


def _same_database(execution: "Execution", management: "Management") -> bool:
    return execution.durable is management or execution.store.db.url == management.store.db.url


def _ring(management: "Management", doorbells: list[Doorbell]) -> None:
    for d in doorbells:
        management.dispatcher.publish(d.workflow_id, d.name, d.queue, d.priority)


# --- inside a workflow ------------------------------------------------------------------


def send_in_workflow(execution: "Execution", workflow_id: str, message: Any, topic: str | None) -> None:
    """A `durable.send` step: the message, the recipient's wake-up and the
    checkpoint commit together. Sending to a workflow that already ended
    stores the message anyway (as DBOS does; a resumed workflow can read it).
    An unknown recipient raises WorkflowNotFoundError, recorded so that a
    replay raises it again."""
    _check_workflow_id(workflow_id)
    _check_name(topic, "topic", optional=True)
    ex = execution
    step_id, row = ex._reserve(SEND)
    if _final(row):
        ex._replay(row, ex.workflow_id)  # raises a recorded error
        return
    payload = ser.dumps(message)  # SerializationError: nothing written, nothing recorded
    message_id = f"wf:{ex.workflow_id}:{step_id}"
    now = now_ms()
    checkpoint = dict(
        workflow_id=ex.workflow_id, step_id=step_id, name=SEND, status=StepStatus.SUCCESS.value,
        output=ser.dumps({"to": workflow_id, "topic": topic, "message_id": message_id}),
        attempts=1, started_at_ms=now, completed_at_ms=now,
    )
    message_row = dict(
        message_id=message_id, workflow_id=workflow_id, topic=topic, payload=payload,
        serialization=ser.FORMAT, sender_workflow_id=ex.workflow_id,
    )
    status, doorbell = retry_while_unavailable(
        lambda: ex.store.send_message(message_row, now, ex.epoch, checkpoint), "sending a message"
    )
    if status == "not_found":
        error = WorkflowNotFoundError(workflow_id)
        existing = ex._checkpoint(dict(
            checkpoint, status=StepStatus.ERROR.value, output=None, error=ser.dumps_error(error),
        ))
        if existing is not None:
            ex._replay(existing, ex.workflow_id)
            return
        raise error
    if status == "unwritten":
        ex._replay(ex._diagnose_unwritten(step_id), ex.workflow_id)
        return
    _ring(ex.durable, [doorbell] if doorbell else [])


def recv_in_workflow(execution: "Execution", topic: str | None, timeout: float | None) -> Any:
    """A `durable.recv` step; see the module docstring."""
    _check_name(topic, "topic", optional=True)
    timeout = _check_timeout(timeout)
    ex = execution
    deadline_id, deadline_row = ex._reserve(RECV_DEADLINE)
    step_id, row = ex._reserve(RECV)
    if _final(row):
        return ex._replay(row, ex.workflow_id)
    ex._note_crash(step_id, RECV, 0)

    def check(timed_out: bool, suspending: bool) -> tuple[bool, Any]:
        now = now_ms()
        checkpoint = dict(
            workflow_id=ex.workflow_id, step_id=step_id, name=RECV,
            status=StepStatus.SUCCESS.value, attempts=1, started_at_ms=now, completed_at_ms=now,
        )
        status, payload = retry_while_unavailable(
            lambda: ex.store.receive_message(ex.workflow_id, topic, ex.epoch, checkpoint, now, timed_out),
            "receiving a message",
        )
        if status == "empty":
            return False, None
        if status == "unwritten":
            return True, ex._replay(ex._diagnose_unwritten(step_id), ex.workflow_id)
        return True, ser.loads(payload)

    return _wait(ex, deadline_id, RECV_DEADLINE, deadline_row, timeout, check)


def set_event_in_workflow(execution: "Execution", key: str, value: Any) -> None:
    """A `durable.set_event` step: the event, its checkpoint and the wake-up
    of its waiters commit together."""
    _check_name(key, "key")
    ex = execution
    step_id, row = ex._reserve(SET_EVENT)
    if _final(row):
        ex._replay(row, ex.workflow_id)
        return
    value_text = ser.dumps(value)  # SerializationError: nothing written
    now = now_ms()
    checkpoint = dict(
        workflow_id=ex.workflow_id, step_id=step_id, name=SET_EVENT,
        status=StepStatus.SUCCESS.value, output=ser.dumps({"key": key, "value": value}),
        attempts=1, started_at_ms=now, completed_at_ms=now,
    )
    written, doorbells = retry_while_unavailable(
        lambda: ex.store.set_event(ex.workflow_id, key, value_text, ex.epoch, checkpoint, now),
        "setting an event",
    )
    if not written:
        ex._diagnose_unwritten(step_id)  # another execution recorded it, or Fenced
        return
    _ring(ex.durable, doorbells)


def get_event_in_workflow(
    execution: "Execution", workflow_id: str, key: str, timeout: float | None
) -> Any:
    """A `durable.get_event` step. A workflow that must wait long registers as
    a waiter (in the same transaction as its last look) and suspends; the
    set_event of that key wakes it."""
    _check_workflow_id(workflow_id)
    _check_name(key, "key")
    timeout = _check_timeout(timeout)
    ex = execution
    deadline_id, deadline_row = ex._reserve(GET_EVENT_DEADLINE)
    step_id, row = ex._reserve(GET_EVENT)
    if _final(row):
        return ex._replay(row, ex.workflow_id)
    ex._note_crash(step_id, GET_EVENT, 0)

    def check(timed_out: bool, suspending: bool) -> tuple[bool, Any]:
        now = now_ms()
        value = retry_while_unavailable(
            lambda: ex.store.read_event(
                workflow_id, key, waiter_workflow_id=ex.workflow_id, wait=suspending, now_ms=now,
            ),
            "reading an event",
        )
        if value is None and not timed_out:
            return False, None
        existing = ex._checkpoint(dict(
            step_id=step_id, name=GET_EVENT, status=StepStatus.SUCCESS.value,
            output=value if value is not None else "null",
            attempts=1, started_at_ms=now, completed_at_ms=now_ms(),
        ))
        if existing is not None:
            return True, ex._replay(existing, ex.workflow_id)
        return True, ser.loads(value)

    return _wait(ex, deadline_id, GET_EVENT_DEADLINE, deadline_row, timeout, check)


def _wait(
    ex: "Execution",
    deadline_id: int,
    deadline_name: str,
    deadline_row: dict[str, Any] | None,
    timeout: float | None,
    check: Callable[[bool, bool], tuple[bool, Any]],
) -> Any:
    """Call `check(timed_out, suspending)` until it is done: the first time
    before any deadline exists, then with the deadline recorded. A short
    remaining wait polls here; a long one suspends the workflow."""
    deadline_ms = _UNSET if deadline_row is None else ser.loads(deadline_row["output"])
    inline_max_ms = ex.durable.settings.inline_wait_max_seconds * 1000
    delay = _POLL_FIRST_SECONDS
    while True:
        now = now_ms()
        known = deadline_ms is not _UNSET
        timed_out = known and deadline_ms is not None and now >= deadline_ms
        suspending = known and not timed_out and (
            deadline_ms is None or deadline_ms - now > inline_max_ms
        )
        done, value = check(timed_out, suspending)
        if done:
            return value
        if not known:
            deadline_ms = _record_deadline(ex, deadline_id, deadline_name, timeout)
            continue
        if suspending:
            raise Suspend(deadline_ms)  # a send / set_event, or the sweeper at the deadline, wakes us
        time.sleep(max(0.0, min(delay, (deadline_ms - now_ms()) / 1000)))
        delay = min(delay * 2, _POLL_MAX_SECONDS)


def _record_deadline(ex: "Execution", step_id: int, name: str, timeout: float | None) -> int | None:
    now = now_ms()
    deadline_ms = None if timeout is None else now + int(timeout * 1000)
    existing = ex._checkpoint(dict(
        step_id=step_id, name=name, status=StepStatus.SUCCESS.value, output=ser.dumps(deadline_ms),
        attempts=1, started_at_ms=now, completed_at_ms=now,
    ))
    return deadline_ms if existing is None else ser.loads(existing["output"])


def _final(row: dict[str, Any] | None) -> bool:
    """A recorded outcome (a RETRYING row only notes a crash while waiting)."""
    return row is not None and row["status"] != StepStatus.RETRYING.value


# --- input checks -------------------------------------------------------------------------


def _check_workflow_id(workflow_id: Any) -> None:
    if not isinstance(workflow_id, str) or not workflow_id or len(workflow_id) > 255:
        raise ValueError(
            f"workflow_id must be a non-empty string of at most 255 characters, got {workflow_id!r}"
        )


def _check_name(value: Any, what: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ValueError(f"{what} must be a non-empty string of at most 255 characters, got {value!r}")


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return float(timeout)
