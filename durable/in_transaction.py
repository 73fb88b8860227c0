"""Starting a workflow inside the caller's own database transaction
(`DurableClient.enqueue(..., transaction=...)`).

The workflow row is written on the caller's connection, so it commits or
rolls back with the caller's own writes; the message that says "look at
workflow X" is published only once the commit is done. That needs the
caller's transaction to be in durable's system database itself: the
database is checked, and another one is refused (ValueError) before
anything is written.

When the publish happens, by kind of transaction:

- a SQLAlchemy `Session` (or `scoped_session`): in its `after_commit` event;
- a SQLAlchemy `Connection`: its `commit` event comes just before the
  commit, so a background thread publishes each workflow once its row is
  visible from durable's own connection (within a few milliseconds);
- a psycopg connection: psycopg has no commit hook, so the row is written
  due at once and the recovery sweeper of any worker publishes it at its
  next sweep (`sweep_interval_seconds`, 1 s by default);
- a `CommitHook` (a connection and the framework's own after-commit hook,
  as `durable.contrib.django` passes): in that hook.

In every case the row also carries its redispatch time: a publish that is
lost (the broker was down at commit) is made again by the sweeper. A
rolled-back transaction leaves no row, so nothing runs.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import event
from sqlalchemy.engine import Connection

from .clock import SYSTEM_CLOCK, Clock
from .dispatch import Dispatcher
from .errors import DuplicateWorkflowError
from .retry import Backoff
from .store import DedupConflict, StartResult, Store
from .store.foreign import (
    database_identity,
    driver_database_identity,
    insert_workflow_driver,
    insert_workflow_on,
)

logger = logging.getLogger("durable.in_transaction")

_PENDING = "durable.pending_publishes"  # Session.info key
# How long the publisher waits for a Connection's commit to show its rows
# before it leaves them to the sweeper (a commit that failed shows nothing).
VISIBLE_WAIT_SECONDS = 2.0

Publish = tuple[str, str, str, int]  # workflow_id, name, queue, priority


def start_in_transaction(
    in_transaction: "InTransaction", row: dict[str, Any], transaction: Any, on_duplicate: str = "raise",
) -> str:
    """Insert the row in the caller's transaction; it is published after the
    commit. Returns the workflow's ID (an existing one's, as `start_workflow`
    does). No wait-out of a database outage here: the caller's transaction
    does not survive one either."""
    try:
        return in_transaction.start(row, transaction).workflow_id
    except DedupConflict as conflict:
        if on_duplicate == "return_existing" and conflict.holder_workflow_id:
            return conflict.holder_workflow_id
        raise DuplicateWorkflowError(row["dedup_key"], row["queue"], conflict.holder_workflow_id) from None


@dataclass(frozen=True)
class CommitHook:
    """A transaction that says when it commits, for frameworks that have a
    hook of their own (Django's `transaction.on_commit`): `connection` is
    the driver connection inside the transaction (psycopg 3, or a
    SQLAlchemy Connection), `on_commit(callback)` runs `callback` after
    the commit and never after a rollback."""

    connection: Any
    on_commit: Callable[[Callable[[], None]], Any]


def _is_psycopg(conn: Any) -> bool:
    psycopg = sys.modules.get("psycopg")  # not imported here unless the caller did
    return psycopg is not None and isinstance(conn, psycopg.Connection)


class InTransaction:
    """Writes workflow rows in callers' transactions and publishes them
    after their commit. One per client."""

    def __init__(self, store: Store, dispatcher: Dispatcher, clock: Clock = SYSTEM_CLOCK):
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self._system_identity: tuple[Any, ...] | None = None
        # driver connections already found to be in durable's database
        self._same_database: weakref.WeakSet[Any] = weakref.WeakSet()
        self._on_connection: weakref.WeakKeyDictionary[Connection, list[Publish]] = (
            weakref.WeakKeyDictionary()
        )
        self._after_commit = _PublishWhenVisible(store, dispatcher, clock)

    def start(self, row: dict[str, Any], transaction: Any) -> StartResult:
        """Insert `row` in `transaction`; its publish waits for the commit.
        Raises DedupConflict as `Store.insert_workflow` does."""
        self.store.db.ensure_schema()
        from sqlalchemy.orm import Session, scoped_session

        if isinstance(transaction, scoped_session):
            transaction = transaction()
        publish: Publish = (row["workflow_id"], row["name"], row["queue"], row["priority"])
        if isinstance(transaction, Session):
            conn = transaction.connection()  # begins the session's transaction if none is open
            result = self._insert(conn, row)
            if result.created:
                self._publish_after_session_commit(transaction, publish)
            return result
        if isinstance(transaction, Connection):
            result = self._insert(transaction, row)
            if result.created:
                self._publish_after_connection_commit(transaction, publish)
            return result
        if isinstance(transaction, CommitHook):
            result = self._insert_hooked(transaction.connection, row)
            if result.created:
                transaction.on_commit(lambda: self._publish_quietly(publish))
            return result
        if _is_psycopg(transaction):
            return self._insert_psycopg(transaction, row)
        raise TypeError(
            "transaction= takes a SQLAlchemy Session or Connection, or a psycopg connection, "
            f"in a transaction on durable's system database; got {type(transaction).__name__}"
        )

    def _insert_hooked(self, conn: Any, row: dict[str, Any]) -> StartResult:
        if isinstance(conn, Connection):
            return self._insert(conn, row)
        if _is_psycopg(conn):
            return self._insert_psycopg(conn, row, hooked=True)
        raise TypeError(
            "CommitHook.connection must be a SQLAlchemy Connection or a psycopg (3) connection, "
            f"got {type(conn).__module__}.{type(conn).__name__}"
        )

    def _publish_quietly(self, publish: Publish) -> None:
        try:
            self.dispatcher.publish(*publish)
        except Exception as exc:  # noqa: BLE001 - never fail the caller's commit hook: the sweeper publishes it
            logger.warning("could not publish workflow %s after commit: %s", publish[0], exc)

    # --- the same database --------------------------------------------------

    def _check_same_database(self, driver_conn: Any, identity: tuple[Any, ...]) -> None:
        if self._system_identity is None:
            with self.store.db.begin() as conn:
                self._system_identity = database_identity(conn)
        if identity != self._system_identity:
            raise ValueError(
                "transaction= must be a transaction on durable's system database "
                f"({self.store.db.url.split('@')[-1]}), so that the workflow row commits with it; "
                f"this one is on another database ({identity[0]} {identity[1]!r}). Enqueue without "
                "transaction= and after your commit instead, or point durable's database_url at "
                "the database your transaction uses"
            )
        try:
            self._same_database.add(driver_conn)
        except TypeError:  # a driver connection without weak references: check every time
            pass

    def _known_same(self, driver_conn: Any) -> bool:
        try:
            return driver_conn in self._same_database
        except TypeError:
            return False

    # --- SQLAlchemy -----------------------------------------------------------

    def _insert(self, conn: Connection, row: dict[str, Any]) -> StartResult:
        driver_conn = conn.connection.dbapi_connection
        if conn.dialect.name != self.store.db.dialect_name:
            raise ValueError(
                f"transaction= is on a {conn.dialect.name} database and durable's system database is "
                f"{self.store.db.dialect_name}: the transaction must be on durable's own database"
            )
        if getattr(driver_conn, "autocommit", False) is True:
            raise ValueError(
                "transaction= is a connection in autocommit mode: there is no transaction for the "
                "workflow row to join (begin one first)"
            )
        if not self._known_same(driver_conn):
            self._check_same_database(driver_conn, database_identity(conn))
        if row.get("dedup_key") is None and conn.in_transaction() and _is_psycopg(driver_conn):
            # the same INSERT on the driver's connection, in the transaction
            # SQLAlchemy has begun (not one it would not know to commit):
            # SQLAlchemy's work around it cost a fifth of the call
            return insert_workflow_driver(driver_conn, row)
        return insert_workflow_on(conn, row, sqlite=self.store.db.is_sqlite)

    def _publish_after_session_commit(self, session: Any, publish: Publish) -> None:
        pending: list[Publish] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []
            event.listen(session, "after_commit", self._session_committed)
            event.listen(session, "after_rollback", self._session_rolled_back)
        pending.append(publish)

    def _session_committed(self, session: Any) -> None:
        pending = session.info.get(_PENDING) or []
        session.info[_PENDING] = []
        for item in pending:
            self.dispatcher.publish(*item)

    @staticmethod
    def _session_rolled_back(session: Any) -> None:
        session.info[_PENDING] = []

    def _publish_after_connection_commit(self, conn: Connection, publish: Publish) -> None:
        pending = self._on_connection.get(conn)
        if pending is None:
            pending = self._on_connection[conn] = []
            event.listen(conn, "commit", self._connection_commits)
            event.listen(conn, "rollback", self._connection_rolled_back)
        pending.append(publish)

    def _connection_commits(self, conn: Connection) -> None:
        # called just before the commit: publish once the rows are visible
        pending = self._on_connection.get(conn) or []
        self._on_connection[conn] = []
        for item in pending:
            self._after_commit.submit(item)

    def _connection_rolled_back(self, conn: Connection) -> None:
        self._on_connection[conn] = []

    # --- psycopg --------------------------------------------------------------

    def _insert_psycopg(self, conn: Any, row: dict[str, Any], hooked: bool = False) -> StartResult:
        from psycopg.pq import TransactionStatus

        if self.store.db.is_sqlite:
            raise ValueError(
                "transaction= is a psycopg (Postgres) connection and durable's system database is "
                "SQLite: the transaction must be on durable's own database"
            )
        status = conn.info.transaction_status
        if conn.autocommit and status == TransactionStatus.IDLE:
            raise ValueError(
                "transaction= is a psycopg connection in autocommit mode outside a transaction "
                "block: there is no transaction for the workflow row to join "
                "(use `with conn.transaction():`)"
            )
        if status == TransactionStatus.INERROR:
            raise ValueError("transaction= is a psycopg connection whose transaction has failed")
        # Idle (its last transaction ended): the check's query begins the
        # caller's next transaction, which the savepoint below then joins (on
        # an idle connection psycopg's transaction() would commit by itself).
        if status == TransactionStatus.IDLE or not self._known_same(conn):
            with conn.cursor() as cursor:
                identity = driver_database_identity(cursor)
            self._check_same_database(conn, identity)
        if not hooked:  # no commit hook: due at once, the sweeper publishes it after the commit
            row = dict(row, redispatch_at_ms=row["created_at_ms"])
        return insert_workflow_driver(conn, row)


class _PublishWhenVisible:
    """A thread that publishes workflows once their row is visible from
    durable's own connection (a SQLAlchemy Connection announces its commit
    just before making it)."""

    def __init__(self, store: Store, dispatcher: Dispatcher, clock: Clock):
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self._queue: queue.SimpleQueue[Publish] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, publish: Publish) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid():  # none yet, or inherited by fork
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._loop, args=(self._queue,), name="durable-after-commit", daemon=True
                )
                self._pid = os.getpid()
                self._thread.start()
            self._queue.put(publish)

    def _loop(self, items: "queue.SimpleQueue[Publish]") -> None:
        while True:
            publish = items.get()
            try:
                self._publish_when_visible(publish)
            except Exception as exc:  # noqa: BLE001 - the sweeper publishes it
                logger.warning("could not publish workflow %s after commit: %s", publish[0], exc)

    def _publish_when_visible(self, publish: Publish) -> None:
        deadline = self.clock.monotonic() + VISIBLE_WAIT_SECONDS
        backoff = Backoff(0.001, 0.1)
        while self.store.workflow_summary(publish[0]) is None:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return  # rolled back after all, or slow: the sweeper publishes a committed row
            self.clock.sleep(backoff.next_pause(remaining))
        self.dispatcher.publish(*publish)

