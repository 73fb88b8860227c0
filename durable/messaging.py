"""Durable messages and events inside a workflow, with DBOS semantics, built
on the engine's step protocol.

    send(workflow_id, message, topic=None)     # a `durable.send` step
    recv(topic=None, timeout=60.0)             # oldest unconsumed message, or None
    set_event(key, value)                      # publish key = value
    get_event(workflow_id, key, timeout=60.0)  # the latest value, or None

Each call is a checkpointed step (`durable.send`, `durable.recv`,
`durable.set_event`, `durable.get_event`): replay returns the recorded
outcome, so a message is never sent twice nor consumed twice. A send's
message ID is derived from (sender, step) and unique in the table; a recv
consumes its message and writes its checkpoint in one transaction fenced by
the lease epoch. A recv or get_event that must wait first records its
deadline as a step (`durable.recv.deadline`, `durable.get_event.deadline`),
so a replay waits for the same moment; a short wait polls in the worker, a
long one suspends the workflow until a send or set_event wakes it, or the
deadline passes. A recv or get_event that finds its answer at once records
no deadline (its reserved step number stays unused).

Outside a workflow, `mailbox.py` sends and reads events without checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable

from . import serialization as ser
from .database import retry_while_unavailable
from .engine import Execution
from .step_protocol import Suspend
from .step_protocol import Position
from .errors import NotInWorkflowError, WorkflowNotFoundError
from .mailbox import check_timeout, ring
from .records import StepStatus
from .retry import Backoff
from .starting import check_name, check_payload_size

__all__ = ["Messaging", "NotInWorkflowError"]

SEND = "durable.send"
RECV = "durable.recv"
RECV_DEADLINE = "durable.recv.deadline"
SET_EVENT = "durable.set_event"
GET_EVENT = "durable.get_event"
GET_EVENT_DEADLINE = "durable.get_event.deadline"

_UNSET: Any = object()


class Messaging:
    """The engine's `WorkflowMessaging`: what `durable.send`, `recv`,
    `set_event` and `get_event` do in workflow code."""

    def send(self, execution: Execution, workflow_id: str, message: Any, topic: str | None) -> None:
        send(execution, workflow_id, message, topic)

    def recv(self, execution: Execution, topic: str | None, timeout: float | None) -> Any:
        return recv(execution, topic, timeout)

    def set_event(self, execution: Execution, key: str, value: Any) -> None:
        set_event(execution, key, value)

    def get_event(self, execution: Execution, workflow_id: str, key: str, timeout: float | None) -> Any:
        return get_event(execution, workflow_id, key, timeout)


def send(ex: Execution, workflow_id: str, message: Any, topic: str | None) -> None:
    """A `durable.send` step: the message, the recipient's wake-up and the
    checkpoint commit together. Sending to a workflow that already ended
    stores the message anyway (as DBOS does; a resumed workflow can read it).
    An unknown recipient raises WorkflowNotFoundError, recorded as the step's
    error so that a replay raises it again."""
    check_name(workflow_id, "workflow_id")
    check_name(topic, "topic", optional=True)
    position = ex.reserve(SEND)
    if position.final:
        ex.replay(position.row or {})  # raises a recorded error
        return
    payload = ser.dumps(message)  # SerializationError: nothing written, nothing recorded
    check_payload_size(payload, ex.settings, "a message")
    message_id = f"wf:{ex.workflow_id}:{position.step_id}"
    checkpoint = ex.outcome(
        position, StepStatus.SUCCESS,
        output=ser.dumps({"to": workflow_id, "topic": topic, "message_id": message_id}),
    )
    message_row = dict(
        message_id=message_id, workflow_id=workflow_id, topic=topic, payload=payload,
        serialization=ser.FORMAT, sender_workflow_id=ex.workflow_id,
    )
    status, doorbell = retry_while_unavailable(
        lambda: ex.store.send_message(message_row, ex.clock.now_ms(), ex.epoch, checkpoint),
        "sending a message", clock=ex.clock,
    )
    if status == "not_found":
        error = WorkflowNotFoundError(workflow_id)
        existing = ex.record(ex.outcome(position, StepStatus.ERROR, error=ser.dumps_error(error)))
        if existing is not None:
            ex.replay(existing)
            return
        raise error
    if status == "unwritten":
        ex.replay(ex.resolve_conflict(position.step_id))
        return
    ring(ex.dispatcher, [doorbell] if doorbell else [])


def recv(ex: Execution, topic: str | None, timeout: float | None) -> Any:
    """A `durable.recv` step; see the module docstring."""
    check_name(topic, "topic", optional=True)
    timeout = check_timeout(timeout)
    deadline = ex.reserve(RECV_DEADLINE)
    position = ex.reserve(RECV)
    if position.final:
        return ex.replay(position.row or {})
    ex.note_crash(position, 0)

    def check(timed_out: bool, suspending: bool) -> tuple[bool, Any]:
        checkpoint = ex.outcome(position, StepStatus.SUCCESS)
        status, payload = retry_while_unavailable(
            lambda: ex.store.receive_message(
                ex.workflow_id, topic, ex.epoch, checkpoint, ex.clock.now_ms(), timed_out
            ),
            "receiving a message", clock=ex.clock,
        )
        if status == "empty":
            return False, None
        if status == "unwritten":
            return True, ex.replay(ex.resolve_conflict(position.step_id))
        return True, ser.loads(payload)

    return _wait(ex, deadline, timeout, check)


def set_event(ex: Execution, key: str, value: Any) -> None:
    """A `durable.set_event` step: the event, its checkpoint and the wake-up
    of its waiters commit together."""
    check_name(key, "key")
    position = ex.reserve(SET_EVENT)
    if position.final:
        ex.replay(position.row or {})
        return
    value_text = ser.dumps(value)  # SerializationError: nothing written
    checkpoint = ex.outcome(position, StepStatus.SUCCESS, output=ser.dumps({"key": key, "value": value}))
    written, doorbells = retry_while_unavailable(
        lambda: ex.store.set_event(ex.workflow_id, key, value_text, ex.epoch, checkpoint, ex.clock.now_ms()),
        "setting an event", clock=ex.clock,
    )
    if not written:
        ex.resolve_conflict(position.step_id)  # another execution recorded it, or Fenced
        return
    ring(ex.dispatcher, doorbells)


def get_event(ex: Execution, workflow_id: str, key: str, timeout: float | None) -> Any:
    """A `durable.get_event` step. A workflow that must wait long registers as
    a waiter (in the same transaction as its last look) and suspends; the
    set_event of that key wakes it."""
    check_name(workflow_id, "workflow_id")
    check_name(key, "key")
    timeout = check_timeout(timeout)
    deadline = ex.reserve(GET_EVENT_DEADLINE)
    position = ex.reserve(GET_EVENT)
    if position.final:
        return ex.replay(position.row or {})
    ex.note_crash(position, 0)

    def check(timed_out: bool, suspending: bool) -> tuple[bool, Any]:
        value = retry_while_unavailable(
            lambda: ex.store.read_event(
                workflow_id, key, waiter_workflow_id=ex.workflow_id, wait=suspending,
                now_ms=ex.clock.now_ms(),
            ),
            "reading an event", clock=ex.clock,
        )
        if value is None and not timed_out:
            return False, None
        output = value if value is not None else "null"
        return True, ex.record_success(position, output, ser.loads(output))

    return _wait(ex, deadline, timeout, check)


def _wait(
    ex: Execution,
    deadline: Position,
    timeout: float | None,
    check: Callable[[bool, bool], tuple[bool, Any]],
) -> Any:
    """Call `check(timed_out, suspending)` until it is done: the first time
    before any deadline exists, then with the deadline recorded. A short
    remaining wait polls here; a long one suspends the workflow."""
    deadline_ms = _UNSET if deadline.row is None else ser.loads(deadline.row["output"])
    inline_max_ms = ex.settings.inline_wait_max_seconds * 1000
    backoff = Backoff(0.05, 0.5)
    while True:
        now = ex.clock.now_ms()
        known = deadline_ms is not _UNSET
        timed_out = known and deadline_ms is not None and now >= deadline_ms
        suspending = known and not timed_out and (
            deadline_ms is None or deadline_ms - now > inline_max_ms
        )
        done, value = check(timed_out, suspending)
        if done:
            return value
        if not known:
            deadline_ms = _record_deadline(ex, deadline, timeout)
            continue
        if suspending:
            raise Suspend(deadline_ms)  # a send / set_event, or the sweeper at the deadline, wakes us
        ex.clock.sleep(backoff.next_pause((deadline_ms - ex.clock.now_ms()) / 1000))


def _record_deadline(ex: Execution, deadline: Position, timeout: float | None) -> int | None:
    deadline_ms = None if timeout is None else ex.clock.now_ms() + int(timeout * 1000)
    recorded: int | None = ex.record_success(deadline, ser.dumps(deadline_ms), deadline_ms)
    return recorded
