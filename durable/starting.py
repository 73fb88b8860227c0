"""Starting a workflow: the options a start accepts, the row a new workflow
starts as, and the insert-then-publish that every start goes through (a
workflow's `start()`, `DurableClient.enqueue`, a child started by its
parent)."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from . import serialization as ser
from . import tracing
from .clock import SYSTEM_CLOCK, Clock
from .database import retry_while_unavailable
from .db_errors import is_transient
from .dispatch import Dispatcher
from .errors import DatabaseUnavailableError, DuplicateWorkflowError, SerializationError
from .limits import check_delay
from .records import Status
from .settings import Settings
from .store import DedupConflict, Store

MAX_NAME_LENGTH = 255
# How long a start waits out a database restart before it gives up and says so.
START_WAIT_SECONDS = 5.0


def check_name(value: Any, what: str, optional: bool = False) -> None:
    """IDs, names, keys, queues and topics: non-empty printable strings that
    fit their column (a NUL or a newline would break logs, URLs and
    Postgres text)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} characters, got {value!r}"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} must not contain control characters (NUL, newline, ...), got {value!r}")


def check_arguments(args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A workflow's arguments: a list or tuple (a string is not split into
    characters) and a dict keyed by parameter names."""
    if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
        raise TypeError(f"args must be a list or tuple of arguments, got {type(args).__name__}: {args!r:.80}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"kwargs must be a dict with string keys, got {kwargs!r:.80}")
    return tuple(args), dict(kwargs)


def derived_child_id(parent_id: str, step_id: int) -> str:
    """A child's ID, from its parent's and its position: the same on every
    replay, and never longer than a workflow ID may be."""
    child_id = f"{parent_id}-{step_id}"
    if len(child_id) <= MAX_NAME_LENGTH:
        return child_id
    digest = hashlib.sha256(parent_id.encode()).hexdigest()[:16]
    return f"{parent_id[: MAX_NAME_LENGTH - len(digest) - len(str(step_id)) - 2]}-{digest}-{step_id}"


@dataclass(frozen=True)
class StartOptions:
    workflow_id: str | None = None
    dedup_key: str | None = None
    queue: str | None = None
    priority: int = 0
    timeout: float | None = None  # seconds; past it the workflow is cancelled
    on_duplicate: str = "raise"  # or "return_existing"
    max_recovery_attempts: int | None = None
    partition_key: str | None = None  # the queue's partition_concurrency counts per key
    delay: float | None = None  # seconds before it may start (a database timer)
    start_at: dt.datetime | None = None  # or the instant it may start
    debounce: float | None = None  # with dedup_key: a later start replaces a pending one's inputs

    def __post_init__(self) -> None:
        check_name(self.workflow_id, "workflow_id", optional=True)
        check_name(self.partition_key, "partition_key", optional=True)
        check_delay(self.delay, self.debounce)
        if self.start_at is not None and not isinstance(self.start_at, dt.datetime):
            raise ValueError(f"start_at must be a datetime, got {self.start_at!r}")
        if self.start_at is not None and self.delay is not None:
            raise ValueError("give delay or start_at, not both")
        if self.debounce is not None and self.dedup_key is None:
            raise ValueError("debounce needs a dedup_key: starts with the same key are the ones debounced")
        check_name(self.dedup_key, "dedup_key", optional=True)
        check_name(self.queue, "queue", optional=True)
        if not isinstance(self.priority, int) or not 0 <= self.priority <= 9:
            raise ValueError(f"priority must be an integer from 0 to 9, got {self.priority!r}")
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
            or not math.isfinite(self.timeout) or not self.timeout > 0
        ):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {self.timeout!r}")
        if self.on_duplicate not in ("raise", "return_existing"):
            raise ValueError(f"on_duplicate must be 'raise' or 'return_existing', got {self.on_duplicate!r}")
        if self.max_recovery_attempts is not None and self.max_recovery_attempts < 0:
            raise ValueError("max_recovery_attempts must be >= 0")

    def start_at_ms(self, now_ms: int) -> int | None:
        """When the workflow may start: None for at once."""
        wait = self.delay if self.delay is not None else self.debounce
        if self.start_at is not None:
            return int(self.start_at.timestamp() * 1000)  # a naive datetime is local time, as in Python
        return now_ms + int(wait * 1000) if wait else None


def new_workflow_row(
    settings: Settings,
    name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    workflow_id: str | None = None,
    queue: str | None = None,
    dedup_key: str | None = None,
    priority: int = 0,
    timeout_seconds: float | None = None,
    max_recovery_attempts: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    partition_key: str | None = None,
    start_at_ms: int | None = None,
) -> dict[str, Any]:
    """The row a new workflow starts as. Checks and serializes the inputs
    first, so bad input fails here before anything is written."""
    args, kwargs = check_arguments(args, kwargs)
    inputs = ser.dumps_inputs(args, kwargs)
    check_payload_size(inputs, settings, f"the inputs of workflow {name!r}")
    now = clock.now_ms()
    row = dict(
        workflow_id=str(uuid.uuid4()) if workflow_id is None else workflow_id,
        name=name,
        status=Status.ENQUEUED.value,
        queue=queue or settings.default_queue,
        dedup_key=dedup_key,
        priority=priority,
        inputs=inputs,
        max_recovery_attempts=max_recovery_attempts,  # None: the workflow's own default
        # If this workflow's message is lost before anyone claims it, the
        # recovery sweeper publishes it again after this; a delayed start's
        # timer is its start time (no broker ETA).
        redispatch_at_ms=start_at_ms if start_at_ms is not None else now + int(settings.redelivery_seconds * 1000),
        partition_key=partition_key,
        start_at_ms=start_at_ms,
        deadline_at_ms=now + int(timeout_seconds * 1000) if timeout_seconds else None,
        app_version=settings.app_version or None,
        created_at_ms=now,
        updated_at_ms=now,
    )
    tracing.stamp(row)  # the trace it is started in, if any: each execution continues it
    return row


def check_payload_size(text: str, settings: Settings, what: str) -> None:
    # on every step's path: a character is at most 4 bytes, so most payloads
    # need no encoding to be known small enough
    if len(text) * 4 <= settings.max_payload_bytes:
        return
    size = len(text.encode())
    if size > settings.max_payload_bytes:
        raise SerializationError(
            f"{what} take {size} bytes once serialized, over the limit of {settings.max_payload_bytes} "
            "(DURABLE_MAX_PAYLOAD_BYTES): store large data elsewhere and pass a reference"
        )


def start_workflow(
    store: Store, dispatcher: Dispatcher, row: dict[str, Any], on_duplicate: str = "raise",
    clock: Clock = SYSTEM_CLOCK, debounce: bool = False,
) -> str:
    """Insert the row and publish it (a delayed one is published by its
    timer); returns the workflow's ID (an existing workflow's, when the ID
    or, with "return_existing", the dedup key was taken). With `debounce`, a
    workflow holding the dedup key that has not started yet takes this
    start's inputs and start time instead."""
    try:
        result = retry_while_unavailable(
            lambda: store.insert_workflow(row), "starting a workflow",
            give_up_after_seconds=START_WAIT_SECONDS, clock=clock,
        )
    except DedupConflict as conflict:
        holder = conflict.holder_workflow_id
        if debounce and holder and store.debounce(holder, row, clock.now_ms()):
            return holder
        if on_duplicate == "return_existing" and conflict.holder_workflow_id:
            return conflict.holder_workflow_id
        raise DuplicateWorkflowError(row["dedup_key"], row["queue"], conflict.holder_workflow_id) from None
    except Exception as exc:
        if is_transient(exc):
            raise DatabaseUnavailableError(
                f"could not start workflow {row['name']!r}: the database is unavailable ({exc})"
            ) from exc
        raise
    publish_if_created(dispatcher, row, result.created, clock)
    return str(row["workflow_id"])


def publish_if_created(dispatcher: Dispatcher, row: dict[str, Any], created: bool, clock: Clock) -> None:
    """Ring the broker for a row just inserted; a delayed one waits for its
    database timer instead."""
    delayed = row.get("start_at_ms") is not None and row["start_at_ms"] > clock.now_ms()
    if created and not delayed:
        dispatcher.publish(row["workflow_id"], row["name"], row["queue"], row["priority"])
