"""The worker's main process watches over its pool children: it notices a
dead one within half a second, not five, and it renews the leases of the
live ones. It also tells them, through one shared byte, whether every chain
link must be published now: task events watched, or queues added or
cancelled at runtime (local_links.py).

Leases. On a prefork pool the main process renews every lease its live
children hold (`leases.ChildLeaseRenewer`, a thread started here), and the
children start no renewal thread of their own: a step holding the GIL in
a C call cannot starve a renewal that runs in another process. The
children to renew for are the pool's (those not reaped yet), the workflows
those the worker received. On a pool without children (threads, solo) the
executions' own process renews, with leases at least
`in_process_lease_seconds` long. Both are decided in `PoolWatch.__init__`,
which runs while the worker is built, before the pool forks: the children
inherit the decision.

Dead children. Celery's prefork pool (AsynPool, used whenever the worker
runs its event loop, e.g. on Redis) learns that a child died from the child's sentinel
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

import gc
import logging
from typing import Any, Callable

from celery import bootsteps

from .dispatch import RUN_TASK, is_durable_task
from .leases import ChildLeaseRenewer
from .local_links import LocalLinks, SharedFlag, publish_every_link
from .runner import Runner

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


def _forks_children(worker: Any) -> bool:
    """Whether the worker runs a prefork pool (with or without event loop)."""
    try:
        from celery.concurrency.prefork import TaskPool
    except ImportError:  # pragma: no cover - platforms without prefork
        return False
    pool_cls = getattr(worker, "pool_cls", None)
    return isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)


def _runner(worker: Any) -> Runner | None:
    task = worker.app.tasks.get(RUN_TASK)
    runner = getattr(task, "durable_runner", None)
    return runner if isinstance(runner, Runner) else None


def _live_children(worker: Any) -> list[int]:
    """Pids of the pool's children not reaped yet. Read from another thread
    than the pool's: copying the list is one step under the GIL, and nothing
    here waits on a child (billiard alone reaps them)."""
    inner = getattr(getattr(worker, "pool", None), "_pool", None)
    processes = list(getattr(inner, "_pool", None) or ())
    return [pid for pid in (getattr(p, "pid", None) for p in processes) if pid]


def _received_workflows() -> list[str]:
    """Workflows whose messages this worker holds: received or running."""
    from celery.worker import state

    for _ in range(10):
        try:  # the consumer adds requests from another thread meanwhile
            requests = list(state.reserved_requests) + list(state.active_requests)
            break
        except RuntimeError:
            continue
    else:
        return []
    return [
        str(r.args[0]) for r in requests
        if is_durable_task(getattr(r, "type", None)) and getattr(r, "args", None)  # `name` is the shadow
    ]


class PoolWatch(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped: its classes are Any
    """Calls the prefork pool's maintain_pool every CHECK_INTERVAL_SECONDS."""

    label = "durable pool watch"
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any):
        self._entry: Any = None
        self._renewer: ChildLeaseRenewer | None = None
        self._publish_all: Callable[[], bool] | None = None
        self._publish_all_flag: SharedFlag | None = None
        runner = _runner(worker)
        if runner is None:
            return
        forks = _forks_children(worker)
        if runner.settings.local_chain_links:
            queues_at_start = frozenset(worker.app.amqp.queues.consume_from)
            self._publish_all = lambda: publish_every_link(getattr(worker, "consumer", None), queues_at_start)
            # pool children read it from this process (one shared byte); others read it themselves
            self._publish_all_flag = SharedFlag(bool(worker.task_events)) if forks else None
            runner.local_links = LocalLinks.of_worker(worker, self._publish_all_flag or self._publish_all)
        if forks:
            # Celery runs a full gc.collect() before forking each child:
            # ~0.08 s of CPU each in a worker this size, most of a
            # restarted worker's pool start. What lives now (modules, the
            # app, the registry) lives as long as the worker: frozen, it is
            # left out of those collections, and the children's
            # copy-on-write pages stay shared (as Python's gc.freeze
            # documentation advises before forking).
            gc.freeze()
            runner.leases.renewed_by_parent = True
            self._renewer = ChildLeaseRenewer(
                runner.store, runner.leases.lease_seconds, runner.clock,
                children=lambda: _live_children(worker), workflows=_received_workflows,
            )
        else:
            runner.leases.keep_in_process(runner.settings.in_process_lease_seconds)

    def start(self, worker: Any) -> None:
        if self._renewer is not None:
            self._renewer.start()
            logger.debug("renewing pool children's leases every %.2f s", self._renewer.lease_seconds / 3)

    def register_with_event_loop(self, worker: Any, hub: Any) -> None:
        # Called again when the consumer restarts after a lost broker
        # connection (Celery cancels the timers registered here): one timer.
        self._cancel()
        pool = _async_pool(worker)
        if pool is not None:
            flag, publish_all = self._publish_all_flag, self._publish_all

            def check() -> None:
                pool.maintain_pool()
                if flag is not None and publish_all is not None:
                    flag.set(publish_all())

            self._entry = hub.call_repeatedly(CHECK_INTERVAL_SECONDS, check)
            logger.debug("checking pool children every %s s", CHECK_INTERVAL_SECONDS)

    def stop(self, worker: Any) -> None:
        # The renewer keeps running (a daemon thread, gone with the process):
        # on a warm shutdown this step stops before the pool, which then
        # waits for the children's running executions, whose leases must
        # not run out meanwhile. Once the pool is gone it has no child to
        # renew for.
        self._cancel()

    def terminate(self, worker: Any) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None
