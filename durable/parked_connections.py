"""Driver connections a process keeps between autocommit statements.

Every start, claim and checkpoint on Postgres is one statement on a driver
cursor (store/prebuilt.py). Taking its connection from SQLAlchemy's pool
and giving it back cost a sixth of a web request's enqueue (logging,
events, weak references and a locked queue on each side). A connection
parked here is still checked out of that pool, so the pool's limits hold;
taking and parking are a list's pop and append, atomic under the GIL.

A connection parked longer than MAX_PARKED_SECONDS goes back to the pool
instead of being used: the pool's own recycling and reset apply to it
again. A process forked with connections parked leaves them to its parent
(their sockets are the parent's).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

MAX_PARKED_SECONDS = 60.0


class ParkedConnections:
    def __init__(self, keep: int):
        self.keep = keep
        self._parked: list[tuple[Any, Any, float]] = []
        self._pid = os.getpid()

    def take(self) -> tuple[Any, Any] | None:
        """A parked (pool connection, cursor), or None: check one out."""
        self._forget_parents()
        while self._parked:
            try:
                fairy, cursor, parked_at = self._parked.pop()
            except IndexError:  # another thread took the last one
                return None
            if time.monotonic() - parked_at < MAX_PARKED_SECONDS:
                return fairy, cursor
            fairy.close()  # back to the pool, which recycles it if it is due
        return None

    def park(self, fairy: Any, cursor: Any) -> None:
        """Keep a valid connection for the next statement (beyond `keep`
        parked, it goes back to the pool)."""
        self._forget_parents()
        if len(self._parked) >= self.keep:
            fairy.close()
            return
        self._parked.append((fairy, cursor, time.monotonic()))

    def close(self) -> None:
        """Return every parked connection to the pool (before it is disposed)."""
        self._empty(lambda fairy: fairy.close())

    def drop_all(self) -> None:
        """Discard every parked connection: one was found lost, and after a
        server restart or failover so is every other one (each would
        otherwise fail one statement, and cost it a retry, in turn)."""
        self._empty(lambda fairy: fairy.invalidate())

    def _empty(self, release: Callable[[Any], None]) -> None:
        self._forget_parents()
        while self._parked:
            try:
                fairy, _cursor, _at = self._parked.pop()
            except IndexError:
                return
            release(fairy)

    def _forget_parents(self) -> None:
        if self._pid != os.getpid():  # forked: those are the parent's sockets
            self._parked, self._pid = [], os.getpid()
