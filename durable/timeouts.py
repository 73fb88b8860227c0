"""Step timeouts for synchronous code.

In the main thread (a Celery prefork child runs tasks there) a real-time
interval timer interrupts the step with StepTimeoutError, as Celery's soft
time limit does. Elsewhere the step runs in a helper thread that is abandoned
at the deadline: the attempt fails on time, though the thread may run on.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

from .errors import StepTimeoutError


def call_with_timeout(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout_seconds: float | None
) -> Any:
    if timeout_seconds is None:
        return fn(*args, **kwargs)
    name = getattr(fn, "__qualname__", repr(fn))
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _with_alarm(fn, args, kwargs, timeout_seconds, name)
    return _with_thread(fn, args, kwargs, timeout_seconds, name)


def _with_alarm(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float, name: str
) -> Any:
    def _expired(_signum: int, _frame: FrameType | None) -> None:
        raise StepTimeoutError(f"step {name} timed out after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _with_thread(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float, name: str
) -> Any:
    outcome: dict[str, Any] = {}

    def _target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=_target, name=f"durable-step-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise StepTimeoutError(f"step {name} timed out after {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
