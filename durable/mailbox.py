"""Messages and events from outside a workflow: a client, a web request, or
a step's own side effect. Not checkpointed (workflow code gets the
checkpointed steps of `messaging.py`); a send is written at once and rings
its recipient, a read of an event polls until it is set.
"""

from __future__ import annotations

import uuid
from typing import Any

from . import serialization as ser
from .clock import SYSTEM_CLOCK, Clock
from .database import retry_while_unavailable
from .dispatch import Dispatcher
from .errors import WorkflowNotFoundError
from .retry import Backoff
from .settings import Settings
from .starting import check_name, check_payload_size
from .store import Doorbell, Store

DEFAULT_TIMEOUT_SECONDS = 60.0


def send(
    store: Store,
    dispatcher: Dispatcher,
    settings: Settings,
    workflow_id: str,
    message: Any,
    topic: str | None = None,
    idempotency_key: str | None = None,
    sender_workflow_id: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Store a message for `workflow_id` and wake it. At least once: pass an
    `idempotency_key` to make a retried send store one message."""
    check_name(workflow_id, "workflow_id")
    check_name(topic, "topic", optional=True)
    check_name(idempotency_key, "idempotency_key", optional=True)
    payload = ser.dumps(message)  # SerializationError before anything is written
    check_payload_size(payload, settings, "a message")
    message_id = (
        f"key:{workflow_id}:{idempotency_key}" if idempotency_key is not None
        else f"client:{uuid.uuid4().hex}"
    )
    row = dict(
        message_id=message_id, workflow_id=workflow_id, topic=topic, payload=payload,
        serialization=ser.FORMAT, sender_workflow_id=sender_workflow_id,
    )
    # a retry after a commit whose reply was lost finds its own message_id: "duplicate"
    status, doorbell = retry_while_unavailable(
        lambda: store.send_message(row, clock.now_ms()), "sending a message", clock=clock
    )
    if status == "not_found":
        raise WorkflowNotFoundError(workflow_id)
    ring(dispatcher, [doorbell] if doorbell else [])


def wait_for_event(
    store: Store,
    workflow_id: str,
    key: str,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    clock: Clock = SYSTEM_CLOCK,
) -> Any:
    """The latest value `workflow_id` set for `key`, polling up to `timeout`
    seconds (None: no limit) for one; None when none was set in time."""
    check_name(workflow_id, "workflow_id")
    check_name(key, "key")
    timeout = check_timeout(timeout)
    deadline = None if timeout is None else clock.monotonic() + timeout
    backoff = Backoff(0.01, 0.5)
    while True:
        value = retry_while_unavailable(
            lambda: store.read_event(workflow_id, key), "reading an event", clock=clock
        )
        if value is not None:
            return ser.loads(value)
        remaining = None if deadline is None else deadline - clock.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        clock.sleep(backoff.next_pause(remaining))


def ring(dispatcher: Dispatcher, doorbells: list[Doorbell]) -> None:
    for d in doorbells:
        dispatcher.publish(d.workflow_id, d.name, d.queue, d.priority)


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return float(timeout)
