"""Sagas: undo what was done when a later step fails for good.

    with durable.saga():
        reserve_stock(order_id)          # @dur.step(compensate=release_stock)
        tx = charge(order_id, total)     # @dur.step(compensate=refund)
        ship(order_id)

When an exception leaves the block, the compensations registered in it
(by steps with `compensate=`, and by `durable.compensate(fn, *args)`) run in
reverse order, then the error is raised again. Compensations are steps:
each is checkpointed, retried by its own policy (a `@dur.step` keeps its
own; a plain function runs once) and replayed after a crash. A recovered
execution replays the saga's steps (registering their compensations again,
from their recorded results), replays the failed step's recorded error,
and replays the compensations that completed: a worker killed halfway
through compensating resumes where it stopped, and no compensation runs
twice once it has completed. A compensation that fails for good ends the
compensating with CompensationFailedError naming both errors.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .context import in_workflow_code
from .errors import CompensationFailedError
from .retry import RetryPolicy


@dataclass(frozen=True)
class _Compensation:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Saga:
    compensations: list[_Compensation] = field(default_factory=list)


_sagas: contextvars.ContextVar[tuple[Saga, ...]] = contextvars.ContextVar("durable_sagas", default=())


@dataclass(frozen=True)
class _PlainStep:
    """A plain function run as a compensation: a checkpointed step, no retries."""

    fn: Callable[..., Any]
    name: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    isolation: str | None = None


@contextmanager
def saga() -> Iterator[Saga]:
    """On an exception leaving the block, run its compensations in reverse
    order, then raise the exception again."""
    current = Saga()
    token = _sagas.set((*_sagas.get(), current))
    failed: Exception | None = None
    try:
        yield current
    except Exception as exc:
        failed = exc
    finally:
        _sagas.reset(token)  # an outer saga's compensations register in it again
    if failed is not None:
        _compensate(current, failed)
        raise failed


def compensate(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Register `fn(*args, **kwargs)` to run if the innermost saga block fails."""
    if not callable(fn):
        raise TypeError(f"compensate needs a function, got {fn!r}")
    stack = _sagas.get()
    if not stack:
        raise RuntimeError("durable.compensate() is for inside a `with durable.saga():` block")
    stack[-1].compensations.append(_Compensation(fn, args, kwargs))


def on_step_success(compensation: Callable[..., Any] | None, result: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> None:
    """A step with `compensate=` succeeded inside a saga: its undo is
    `compensation(result, *args, **kwargs)`."""
    stack = _sagas.get()
    if compensation is not None and stack:
        stack[-1].compensations.append(_Compensation(compensation, (result, *args), kwargs))


def _compensate(current: Saga, original: Exception) -> None:
    for item in reversed(current.compensations):
        try:
            _run(item)
        except Exception as failed:
            raise CompensationFailedError(
                f"{type(original).__name__}: {original}", f"{type(failed).__name__}: {failed}"
            ) from original


def _run(item: _Compensation) -> Any:
    execution = in_workflow_code()
    if execution is None or hasattr(item.fn, "policy"):  # a @dur.step checkpoints itself
        return item.fn(*item.args, **item.kwargs)
    name = f"compensate:{getattr(item.fn, '__qualname__', repr(item.fn))}"[:255]
    return execution.run_step(_PlainStep(item.fn, name), item.args, item.kwargs)
