"""A started workflow's handle: its status, and waiting for its result
(woken by the database's notification on Postgres, polling on SQLite),
from threads or from asyncio code."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from . import serialization as ser
from .clock import Clock
from .context import in_workflow_code
from .database import retry_while_unavailable
from .errors import WorkflowNotFoundError
from .records import Status, WorkflowStatus
from .retry import Backoff
from .store import Store
from .store.listen import EndedListener

# Waiting for a result on Postgres: how long the first wait gives the LISTEN
# connection to come up, and the slow poll kept as a safety net meanwhile.
LISTEN_WAIT_SECONDS = 2.0
SAFETY_POLL_FIRST_SECONDS = 0.5
SAFETY_POLL_MAX_SECONDS = 5.0


CELERY_STATES = {
    Status.ENQUEUED: "PENDING",
    Status.PENDING: "STARTED",
    Status.SUCCESS: "SUCCESS",
    Status.ERROR: "FAILURE",
    Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED: "FAILURE",
    Status.CANCELLED: "REVOKED",
}


class Workflows(Protocol):
    """What a handle reads through (client.Management is one)."""

    store: Store
    clock: Clock

    def get(self, workflow_id: str, with_payloads: bool = True) -> WorkflowStatus: ...
    async def get_async(self, workflow_id: str, with_payloads: bool = True) -> WorkflowStatus: ...
    def ended_listener(self) -> EndedListener | None: ...


class WorkflowHandle:
    """A started workflow. Inside a workflow, `result()` suspends the caller
    until this one ends; elsewhere it waits for the end: woken by the
    database's notification on Postgres, polling (backed off) on SQLite."""

    def __init__(self, workflow_id: str, management: "Workflows"):
        self.workflow_id = workflow_id
        self._management = management

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    def status(self, with_payloads: bool = True) -> WorkflowStatus:
        return self._management.get(self.workflow_id, with_payloads=with_payloads)

    # Celery's AsyncResult names, so code that waits on a Celery result keeps
    # working on a durable one (a canvas's `apply_async()` returns a handle).

    @property
    def id(self) -> str:
        return self.workflow_id

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.2) -> Any:
        """`result()`; with `propagate=False` the workflow's error is
        returned instead of raised (a timeout is still raised)."""
        try:
            return self.result(timeout=timeout, poll_interval_seconds=interval)
        except TimeoutError:
            raise
        except Exception as exc:
            if propagate:
                raise
            return exc

    @property
    def state(self) -> str:
        """The status as Celery names task states: PENDING (enqueued),
        STARTED, SUCCESS, FAILURE (an error, or quarantined), REVOKED (cancelled)."""
        return CELERY_STATES[self.status(with_payloads=False).status]

    def ready(self) -> bool:
        return self.status(with_payloads=False).status.is_terminal

    def successful(self) -> bool:
        return self.status(with_payloads=False).status is Status.SUCCESS

    def failed(self) -> bool:
        return CELERY_STATES[self.status(with_payloads=False).status] == "FAILURE"

    def result(self, timeout: float | None = None, poll_interval_seconds: float = 0.2) -> Any:
        """The workflow's output, or its error raised; TimeoutError when it is
        still running after `timeout` seconds. `poll_interval_seconds` is the
        longest pause between two looks where nothing notifies (SQLite, or
        Postgres while the LISTEN connection is down)."""
        execution = in_workflow_code()
        if execution is not None:
            return execution.await_workflow(self.workflow_id, timeout)
        clock = self._management.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        listener = self._management.ended_listener()
        if listener is None:
            backoff = Backoff(0.005, poll_interval_seconds)
            while True:
                ended, output = self._look(deadline, timeout)
                if ended:
                    return output
                clock.sleep(backoff.next_pause(self._remaining(deadline)))
        woken = threading.Event()
        unsubscribe = listener.subscribe(self.workflow_id, woken.set)
        try:
            listener.wait_listening(LISTEN_WAIT_SECONDS)
            safety_net = Backoff(SAFETY_POLL_FIRST_SECONDS, SAFETY_POLL_MAX_SECONDS)
            unheard = Backoff(0.005, poll_interval_seconds)
            while True:
                woken.clear()  # before the look: an end notified after it wakes the wait below
                ended, output = self._look(deadline, timeout)
                if ended:
                    return output
                pause = (safety_net if listener.listening else unheard).next_pause(self._remaining(deadline))
                woken.wait(pause)
        finally:
            unsubscribe()

    async def result_async(self, timeout: float | None = None, poll_interval_seconds: float = 0.2) -> Any:
        """`result()` for asyncio code: the event loop keeps running while it
        waits. The wait itself holds no thread (a notification sets an
        asyncio event through `call_soon_threadsafe`); each look at the row
        is a short blocking query, run in the loop's default executor."""
        if in_workflow_code() is not None:
            raise RuntimeError("result_async() is for asyncio code outside workflows; a workflow uses result()")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else self._management.clock.monotonic() + timeout
        listener = self._management.ended_listener()
        woken = asyncio.Event()

        def wake() -> None:  # from the listener's thread
            loop.call_soon_threadsafe(woken.set)

        unsubscribe = None
        if listener is not None:
            unsubscribe = listener.subscribe(self.workflow_id, wake)
        try:
            if listener is not None and not listener.listening:
                await loop.run_in_executor(None, listener.wait_listening, LISTEN_WAIT_SECONDS)
            safety_net = Backoff(SAFETY_POLL_FIRST_SECONDS, SAFETY_POLL_MAX_SECONDS)
            unheard = Backoff(0.005, poll_interval_seconds)
            while True:
                woken.clear()
                ended, output = await loop.run_in_executor(None, self._look, deadline, timeout)
                if ended:
                    return output
                heard = listener is not None and listener.listening
                pause = (safety_net if heard else unheard).next_pause(self._remaining(deadline))
                try:
                    await asyncio.wait_for(woken.wait(), pause)
                except asyncio.TimeoutError:
                    pass
        finally:
            if unsubscribe is not None:
                unsubscribe()

    async def status_async(self) -> WorkflowStatus:
        return await self._management.get_async(self.workflow_id)

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._management.clock.monotonic()

    def _look(self, deadline: float | None, timeout: float | None) -> tuple[bool, Any]:
        """One look at the workflow: (True, output) when it succeeded; its
        error raised when it failed; TimeoutError past the deadline; (False,
        None) while it runs."""
        management = self._management
        outcome = retry_while_unavailable(  # a waiting client survives a database restart
            lambda: management.store.workflow_outcome(self.workflow_id), "waiting for a result",
            clock=management.clock,
        )
        if outcome is None:
            raise WorkflowNotFoundError(self.workflow_id)
        status = outcome["status"]
        if status == Status.SUCCESS.value:
            return True, ser.loads(outcome["output"])
        if status not in (Status.ENQUEUED.value, Status.PENDING.value):
            raise ser.outcome_error(self.workflow_id, status, outcome["error"])
        remaining = self._remaining(deadline)
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"workflow {self.workflow_id!r} still {status} after {timeout}s")
        return False, None
