"""Notice a dead pool child within half a second, not five.

Celery's prefork pool (AsynPool, used whenever the worker runs its event
loop, e.g. on Redis) learns that a child died from the child's sentinel
pipe. When the pipe turns readable, the pool stops watching it and calls
`maintain_pool`, which reaps exited children (`waitpid(WNOHANG)` through
billiard's Popen), reports the task of a dead one as lost (WorkerLostError:
our DurableRequest.on_failure expires the lease, the message is requeued)
and forks a replacement. But the kernel closes a dying process's files
before the process becomes reapable: if `maintain_pool` runs in that window
it finds the child still alive, the sentinel is no longer watched, and the
death waits for the pool's only other call, a 5 s timer
(`AsynPool.timers = {maintain_pool: 5.0}`). That is the slow mode of
child-kill recovery, which plain Celery shows too.

PoolWatch adds the same call every CHECK_INTERVAL_SECONDS on the worker's
event loop. It is the pool's own routine, run in the thread that runs it
anyway, so a child is still reaped once and by billiard (its Popen keeps the
exit code), replacements and max_tasks_per_child work as before, and a call
that finds every child alive costs one waitpid per child.

Without an event loop (the embedded filesystem broker) the pool is
billiard's blocking Pool: no sentinel, and a supervisor thread already calls
`maintain_pool` every 0.8 s. Calling it from another thread could reap a
child twice, so PoolWatch stays out of that case; so it does for pools
without children (solo, threads).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

logger = logging.getLogger("durable.pool_watch")

CHECK_INTERVAL_SECONDS = 0.5


def _async_pool(worker: Any) -> Any:
    """The worker's AsynPool, or None when it runs another kind of pool."""
    try:
        from celery.concurrency.asynpool import AsynPool
    except ImportError:  # pragma: no cover - platforms without prefork
        return None
    inner = getattr(getattr(worker, "pool", None), "_pool", None)
    return inner if isinstance(inner, AsynPool) else None


class PoolWatch(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped: its classes are Any
    """Calls the prefork pool's maintain_pool every CHECK_INTERVAL_SECONDS."""

    label = "durable pool watch"
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any):
        self._entry: Any = None

    def register_with_event_loop(self, worker: Any, hub: Any) -> None:
        # Called again when the consumer restarts after a lost broker
        # connection (Celery cancels the timers registered here): one timer.
        self._cancel()
        pool = _async_pool(worker)
        if pool is not None:
            self._entry = hub.call_repeatedly(CHECK_INTERVAL_SECONDS, pool.maintain_pool)
            logger.debug("checking pool children every %s s", CHECK_INTERVAL_SECONDS)

    def stop(self, worker: Any) -> None:
        self._cancel()

    def terminate(self, worker: Any) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None
