"""No fork while a thread of this process is inside the database driver.

SQLite keeps process-wide mutexes (its allocator's, its file-lock
table's). A prefork pool forks a replacement child from the worker's main
process at the moment a child dies, which is also when the main thread
records that death in the database and while the sweeper thread sweeps:
a fork in the middle of one of those calls hands the new child a mutex
held by a thread it does not have, and its first database call hangs
forever (the child never runs a task; its workflows wait for nobody).

Python's own import locks are the same hazard: a module being imported
by another thread at the fork is locked for good in the child, whose first
import of it never returns.

The worker's main process runs its database calls, and a thread's work
that imports (recording the workflows' parameters loads pydantic), inside
`no_fork_meanwhile()`; a fork waits for them to finish. Pool children,
which fork nothing, need not.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

_guard = threading.RLock()


@contextmanager
def no_fork_meanwhile() -> Iterator[None]:
    with _guard:
        yield


@contextmanager
def no_fork_meanwhile_within(timeout_seconds: float | None) -> Iterator[bool]:
    """`no_fork_meanwhile()` if it comes within `timeout_seconds` (None:
    however long it takes); yields whether it did. For work that must not
    wait behind another thread's long call (lease renewal behind a publish
    to a broker that does not answer) and can run unguarded where a fork
    risks nothing."""
    acquired = _guard.acquire(timeout=-1 if timeout_seconds is None else timeout_seconds)
    try:
        yield acquired
    finally:
        if acquired:
            _guard.release()


def _before_fork() -> None:
    _guard.acquire()


def _after_fork_in_parent() -> None:
    _guard.release()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.RLock()  # the child has only the thread that forked


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
