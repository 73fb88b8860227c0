"""Workflows for tests/test_tracing.py, run by real workers. A worker that
has DURABLE_TEST_SPANS_FILE in its environment exports every span it ends
to that file (tests/span_files.py): importing this module installs the
tracer provider, before the pool forks."""

from __future__ import annotations

import os
import signal

import durable
from tests import span_files
from tests.workflows import effects_dir
from workers.app import dur

if os.environ.get("DURABLE_TEST_SPANS_FILE"):
    span_files.install(os.environ["DURABLE_TEST_SPANS_FILE"])


def first_time(key: str, what: str) -> bool:
    """True once per (key, what): leaves a marker file."""
    effects_dir().mkdir(parents=True, exist_ok=True)
    marker = effects_dir() / f"{key}.{what}"
    if marker.exists():
        return False
    marker.touch()
    return True


@dur.step(name="traced.reserve")
def reserve(order_id: str) -> str:
    return f"reserved {order_id}"


@dur.step(name="traced.flaky", retries=1, interval=0.01)
def flaky(key: str) -> str:
    if first_time(key, "flaky"):
        raise ConnectionError("the first attempt fails")
    return "ok"


@dur.step(name="traced.charge", queue="traced-steps")
def charge(amount: int) -> int:
    return os.getpid()


@dur.step(name="traced.pack")
def pack(order_id: str) -> str:
    return f"packed {order_id}"


@dur.workflow(name="traced.ship")
def ship(order_id: str) -> str:
    return pack(order_id)


@dur.step(name="traced.fragile")
def fragile(key: str) -> str:
    if first_time(key, "fragile"):
        os.kill(os.getpid(), signal.SIGKILL)  # the execution is lost mid-step; a recovery finishes it
    return "survived"


@dur.workflow(name="traced.order")
def order(order_id: str) -> dict:
    key = durable.context().workflow_id or ""
    return {
        "reserved": reserve(order_id),
        "flaky": flaky(key),
        "charged_by": charge(10),
        "shipped": ship.start(order_id).result(),
        "fragile": fragile(key),
    }
