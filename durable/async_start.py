"""A start's INSERT from asyncio code, awaited on the event loop itself.

`DurableClient.enqueue_async` used to run the whole synchronous enqueue in
the loop's executor: a thread hop each way, and the thread and the loop
taking the GIL from each other, cost as much as the INSERT. On Postgres the
common start (no dedup key, no debounce) is one autocommit INSERT, so it runs
here on a psycopg `AsyncConnection`: the same prebuilt statement as the
synchronous start, awaited on the caller's loop. Anything else (a dedup key's
conflict, the database away, SQLite) is left to the synchronous path, which
already knows what to do with it.

The connections are a short list of idle ones per event loop, not a pool
library's: a pool runs tasks of its own in the caller's loop and must be
closed in it, which a loop that a test client or a framework starts and drops
would never do. An idle connection here is just a socket; a dropped loop's
are garbage with it.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from sqlalchemy.engine import make_url

from .database import POSTGRES_CONNECT_ARGS, Database
from .store.base import StartResult, insert_params

# Idle connections kept per loop; a burst above it opens and closes extra ones.
MAX_IDLE = 5


class AsyncStarts:
    def __init__(self, db: Database, insert_sql: Any):
        """`insert_sql(columns)` gives the prebuilt INSERT for a row's columns
        as (SQL in psycopg's style, the statement's own constants)."""
        self.db = db
        self._insert_sql = insert_sql
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = weakref.WeakKeyDictionary()
        self._pid = os.getpid()
        self._conninfo = (
            make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
            if not db.is_sqlite else ""
        )

    def ready(self) -> bool:
        """Whether a start can run here at all: Postgres, and the schema
        checked already (that check is the synchronous path's)."""
        return not self.db.is_sqlite and self.db.schema_checked

    def handles(self, row: dict[str, Any]) -> bool:
        """Whether this row's start is the plain one this module runs."""
        return self.ready() and row.get("dedup_key") is None

    async def insert(self, row: dict[str, Any]) -> StartResult:
        """INSERT the row, autocommit; an existing ID is absorbed by ON
        CONFLICT, as in the synchronous start. Driver errors propagate (the
        caller falls back to the synchronous path, which classifies them)."""
        values = insert_params(row)
        sql, constants = self._insert_sql(tuple(sorted(k[2:] for k in values)))
        params = {**constants, **values}
        conn, cursor = await self._acquire()
        try:
            await cursor.execute(sql, params)
            inserted = await cursor.fetchone()
        except BaseException:  # an error, or the caller cancelled mid-statement: its state is unknown
            _drop(conn)
            raise
        self._release(conn, cursor)
        return StartResult(created=inserted is not None, workflow_id=row["workflow_id"])

    async def _acquire(self) -> tuple[Any, Any]:
        import psycopg

        if self._pid != os.getpid():  # a forked child: the parent's sockets are the parent's
            self._idle = weakref.WeakKeyDictionary()
            self._pid = os.getpid()
        idle = self._idle.setdefault(asyncio.get_running_loop(), [])
        while idle:
            conn, cursor = idle.pop()
            if not conn.closed:
                return conn, cursor
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=POSTGRES_CONNECT_ARGS["connect_timeout"]
        )
        return conn, conn.cursor()  # kept with its connection: a cursor per start cost ~5 % of it

    def _release(self, conn: Any, cursor: Any) -> None:
        idle = self._idle.setdefault(asyncio.get_running_loop(), [])
        if len(idle) < MAX_IDLE and not conn.closed:
            idle.append((conn, cursor))
        else:
            _drop(conn)

    def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, weakref.WeakKeyDictionary()
        if self._pid == os.getpid():
            for conns in list(idle.values()):
                for conn, _cursor in conns:
                    _drop(conn)


def _drop(conn: Any) -> None:
    """Close a connection without awaiting: its loop may be gone or busy."""
    try:
        conn.pgconn.finish()
    except Exception:  # noqa: BLE001 - a broken connection is dropped either way
        pass
