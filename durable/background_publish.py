"""Publishing a started workflow's message after `start()` has returned.

A start is durable once its row is committed: the row is the truth, and a
message that never reaches the broker is published by the recovery
sweeper. So the caller (a web request) need not wait for the broker too:
`start()` and `DurableClient.enqueue()` return once the INSERT has
committed, and this thread rings the broker a moment later. What the
caller waits for is the one commit; what a crash in between costs is a
start delayed by a sweep, never a lost one.

The thread is per process: a process forked with messages still queued
(gunicorn's pre-fork, Celery's prefork pool) leaves them to the parent that
queued them, and the child starts its own thread on its first publish. At
interpreter exit the queue is drained (for at most FLUSH_SECONDS), so a
script that starts a workflow and exits still publishes it.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref

from .dispatch import Dispatcher

logger = logging.getLogger("durable.dispatch")

FLUSH_SECONDS = 5.0
LINGER_SECONDS = 0.002

_Message = tuple[str, str, str, int]


class BackgroundDispatcher:
    """A Dispatcher whose `publish` queues the message for a thread that
    publishes it through `inner`; `publish` returns True at once (a failed
    publish is the sweeper's, as with a synchronous one)."""

    def __init__(self, inner: Dispatcher):
        self.inner = inner
        self._lock = threading.Lock()
        self._pending: queue.SimpleQueue[_Message | None] = queue.SimpleQueue()  # put: no lock, no Condition
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _live.add(self)

    def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
        self._ensure_thread()
        self._pending.put((workflow_id, name, queue, priority))
        return True

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until every queued message was published (or its publish
        failed); False if `timeout` passed first."""
        if self._thread is None or self._pid != os.getpid():
            return True
        done = threading.Event()
        self._markers.append(done)
        self._pending.put(None)  # a marker: everything queued before it is done when it is reached
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's queue is the parent's
                self._pid = os.getpid()
                self._pending = queue.SimpleQueue()
                self._thread = None
            if self._thread is None:
                self._markers: list[threading.Event] = []
                self._thread = threading.Thread(target=self._run, name="durable-publish", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        pending, markers = self._pending, self._markers
        while True:
            message = pending.get()
            if pending.empty():
                # Let the caller's thread run on first: publishing holds the
                # GIL for most of a millisecond, which would land in the time
                # of the request that just started a workflow.
                time.sleep(LINGER_SECONDS)
            if message is None:
                markers.pop(0).set()
                continue
            try:
                self.inner.publish(*message)
            except Exception:  # noqa: BLE001 - the sweeper publishes what this could not
                logger.exception("publishing workflow %s failed (the sweeper will)", message[0])


_live: weakref.WeakSet[BackgroundDispatcher] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for dispatcher in list(_live):
        if not dispatcher.flush():
            logger.warning("exiting with workflow messages unpublished (the sweeper will publish them)")
