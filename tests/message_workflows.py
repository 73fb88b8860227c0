"""Workflows for the durable messages and events tests (tests/test_messages.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import durable
from durable.errors import SerializationError, WorkflowNotFoundError
from tests.workflows import effects, record
from workers.app import dur


@dur.step()
def pause_once(tag: str, seconds: float) -> str:
    """Records that it ran; pauses only on its first run, so a test can kill
    the process while it pauses and the re-run is quick."""
    first_run = not any(kind == tag for kind, _, _ in effects(durable.context().workflow_id))
    record(tag)
    if first_run:
        time.sleep(seconds)
    return tag


@dur.workflow()
def recv_one(topic: str | None = None, timeout: float | None = 60.0) -> Any:
    return durable.recv(topic, timeout=timeout)


@dur.workflow()
def recv_many(count: int, topic: str | None = None, timeout: float = 60.0) -> list[Any]:
    return [durable.recv(topic, timeout=timeout) for _ in range(count)]


@dur.workflow()
def recv_then_pause(pause_seconds: float) -> list[Any]:
    """Receive, then pause in a step (a test kills the worker there), then
    receive again: the recovered run must replay the first message, not take
    the second one twice."""
    first = durable.recv(timeout=60)
    pause_once("after_recv", pause_seconds)
    second = durable.recv(timeout=60)
    return [first, second]


@dur.workflow()
def send_then_pause(to: str, messages: list[Any], pause_seconds: float, topic: str | None = None) -> int:
    """Send, pause in a step (a test kills the worker there), sleep long
    enough to suspend (another replay), send once more."""
    for message in messages:
        durable.send(to, message, topic=topic)
    pause_once("after_send", pause_seconds)
    durable.sleep(2.5)  # longer than inline_wait_max_seconds: suspends, then replays
    durable.send(to, "last", topic=topic)
    return len(messages) + 1


@dur.workflow()
def send_bad_input(to_missing: str, to_existing: str) -> dict[str, str]:
    """Each bad send raises in the workflow and can be caught; replay agrees."""
    out = {}
    try:
        durable.send(to_missing, "hello")
    except WorkflowNotFoundError as exc:
        out["missing"] = type(exc).__name__
    try:
        durable.send(to_existing, threading.Lock())
    except SerializationError as exc:
        out["unserializable"] = type(exc).__name__
    durable.sleep(2.5)  # suspend and replay the recorded outcomes
    durable.send(to_existing, "ok")
    return out


@dur.workflow()
def publish_events(key: str, values: list[Any], then_wait_seconds: float = 0.0) -> str:
    for value in values:
        durable.set_event(key, value)
    if then_wait_seconds:
        durable.sleep(then_wait_seconds)
    return "published"


@dur.workflow()
def wait_for_event(target: str, key: str, timeout: float | None = 60.0) -> Any:
    return durable.get_event(target, key, timeout=timeout)


@dur.workflow()
def misuse_in_step() -> dict[str, str]:
    """recv/set_event belong to the workflow function, not to a step."""
    return misused()


@dur.step()
def misused() -> dict[str, str]:
    out = {}
    for name, call in (("recv", lambda: durable.recv(timeout=0)), ("set_event", lambda: durable.set_event("k", 1))):
        try:
            call()
        except durable.errors.DurableError as exc:
            out[name] = str(exc)
    return out


@dur.workflow()
def send_from_step(to: str) -> str:
    return step_that_sends(to)


@dur.step()
def step_that_sends(to: str) -> str:
    durable.send(to, "from a step", topic="steps")  # the step's own side effect
    return durable.get_event(to, "never-set", timeout=0.1) or "no event"
