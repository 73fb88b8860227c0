"""Connections to the system database: one SQLAlchemy engine per process
(re-created after fork), SQLite tuned for several processes, the schema
migrated (or, where auto-migration is off, checked) once per process, and
a wait-out for a database that is down."""

from __future__ import annotations

import ast
import fcntl
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .clock import SYSTEM_CLOCK, Clock
from .db_errors import is_transient, is_unavailable
from .errors import SchemaError
from .parked_connections import ParkedConnections
from .retry import Backoff

logger = logging.getLogger("durable.database")

T = TypeVar("T")

VERSION_TABLE = "durable_alembic_version"
# A server that does not answer is "unavailable" after this, not a hang.
POSTGRES_CONNECT_ARGS = {"connect_timeout": 10}
_MIGRATIONS = Path(__file__).parent / "migrations"
PARKED_PER_PROCESS = 5


@dataclass(frozen=True)
class SchemaHistory:
    """One line of Alembic migrations and where it records its revision."""

    script_location: Path
    version_table: str
    lock_id: int  # Postgres advisory lock taken while migrating


# durable's own tables, in its system database
SYSTEM_TABLES = SchemaHistory(_MIGRATIONS, VERSION_TABLE, 0x64757261)  # "dura"
# what @transaction steps need in an application database of their own
APP_TABLES = SchemaHistory(_MIGRATIONS / "app_database", "durable_app_alembic_version", 0x64757262)


class Database:
    """A process-local engine for one database URL."""

    def __init__(
        self,
        url: str,
        echo: bool = False,
        history: SchemaHistory = SYSTEM_TABLES,
        auto_migrate: bool | None = None,
        migration_lock_timeout_seconds: float = 60.0,
    ):
        """`auto_migrate`: migrate on first use (True) or only check the
        schema (False); None: DURABLE_AUTO_MIGRATE when set, else on for
        SQLite and off for Postgres (see Settings.auto_migrate)."""
        self.url = url
        self.history = history
        self.echo = echo
        self.dialect_name = url.split(":", 1)[0].split("+", 1)[0]
        if auto_migrate is None:
            flag = os.environ.get("DURABLE_AUTO_MIGRATE", "").strip().lower()
            auto_migrate = flag in ("1", "true", "yes", "on") if flag else self.dialect_name == "sqlite"
        self.auto_migrate = auto_migrate
        self.migration_lock_timeout_seconds = migration_lock_timeout_seconds
        self._engine: Engine | None = None
        self._autocommit_engine: Engine | None = None
        self._pid = 0
        self._lock_pid = os.getpid()
        self._lock_here = threading.Lock()
        self._pin = threading.local()
        self._parked = ParkedConnections(keep=PARKED_PER_PROCESS)
        self._migrated = False

    @property
    def is_sqlite(self) -> bool:
        return self.dialect_name == "sqlite"

    @property
    def _lock(self) -> threading.Lock:
        # A lock another thread (the sweeper) held at fork time stays held in
        # the child forever: a pool child forked then would hang. So each
        # process gets its own lock.
        pid = os.getpid()
        if self._lock_pid != pid:
            self._lock_here = threading.Lock()
            self._lock_pid = pid
        return self._lock_here

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
                    self._autocommit_engine = None
                elif self._pid != pid:
                    # Inherited across fork: each engine gets a new pool and never
                    # touches the parent's sockets (SQLAlchemy's way for a forked
                    # process), and keeps its dialect, which the parent's first
                    # connection set up (~5 queries and ~6 ms of CPU a new engine
                    # costs a pool child on its first connection).
                    for inherited in (self._engine, self._autocommit_engine):
                        if inherited is not None:
                            inherited.dispose(close=False)
                self._pid = pid
        return self._engine

    @property
    def autocommit_engine(self) -> Engine:
        engine = self.engine  # re-created after fork first
        if self.is_sqlite:
            return engine
        if self._autocommit_engine is None:
            with self._lock:
                if self._autocommit_engine is None:
                    self._autocommit_engine = create_engine(
                        # idle connections are parked (parked_connections.py), up to
                        # PARKED_PER_PROCESS: the pool itself keeps one more at most;
                        # 15 open at most, as for the other engine
                        self.url, echo=self.echo, pool_size=1, max_overflow=14,
                        pool_recycle=3600, isolation_level="AUTOCOMMIT",
                        # nothing to roll back on return: every statement committed itself
                        pool_reset_on_return=None,
                        connect_args=POSTGRES_CONNECT_ARGS,
                    )
        return self._autocommit_engine

    def _create_engine(self) -> Engine:
        if self.is_sqlite:
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                self.url, echo=self.echo, connect_args={"timeout": 60, "check_same_thread": False}
            )
            _tune_sqlite(engine)
            return engine
        return create_engine(
            self.url, echo=self.echo, pool_size=5, max_overflow=10, pool_recycle=3600,
            connect_args=POSTGRES_CONNECT_ARGS,
        )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        self.ensure_schema()
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def driver_cursor(self) -> Iterator[Any]:
        """A cursor on the pool's DBAPI connection itself, in autocommit
        (Postgres only), for the statements on every step's path:
        SQLAlchemy's per-call work (cache key, parameter processing, result
        setup) costs about as much as the round trip. Inside `pinned()` the
        thread keeps one connection and cursor. Driver errors come out as
        SQLAlchemy's, so `is_unavailable` reads them like any other."""
        self.ensure_schema()
        engine = self.autocommit_engine
        dialect = engine.dialect
        pin = self._pin if self._pinned_here() else None
        parked = None if pin is not None and pin.fairy is not None else self._parked.take()
        if pin is not None and pin.fairy is not None:
            fairy, cursor = pin.fairy, pin.cursor
        elif parked is not None:
            fairy, cursor = parked
        else:
            fairy = None
            try:
                fairy = engine.raw_connection()
                cursor = _kept_cursor(fairy)
            except dialect.loaded_dbapi.Error as exc:
                # the pool hands out the driver's own error when it cannot
                # connect (the server is down): say it as SQLAlchemy would
                if fairy is not None:
                    fairy.invalidate(exc)
                raise DBAPIError.instance(
                    None, None, exc, dialect.loaded_dbapi.Error,
                    connection_invalidated=fairy is not None, dialect=dialect,
                ) from exc
        try:
            yield cursor
        except dialect.loaded_dbapi.Error as exc:
            lost = dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
            if lost:
                fairy.invalidate(exc)
                self._parked.drop_all()
            raise DBAPIError.instance(
                None, None, exc, dialect.loaded_dbapi.Error,
                connection_invalidated=lost, dialect=dialect,
            ) from exc
        finally:
            if pin is not None and fairy.is_valid:
                pin.fairy, pin.cursor = fairy, cursor
            else:
                if pin is not None:
                    pin.fairy = pin.cursor = None
                if fairy.is_valid:
                    self._parked.park(fairy, cursor)
                else:
                    _close_quietly(cursor)
                    fairy.close()

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Keep this thread's driver connection checked out until the block
        ends (one workflow execution), instead of a pool checkout per step."""
        pin = self._pin
        if self._pinned_here():  # already pinned further up
            yield
            return
        pin.active, pin.fairy, pin.cursor, pin.pid = True, None, None, os.getpid()
        try:
            yield
        finally:
            fairy, cursor = pin.fairy, pin.cursor
            pin.active, pin.fairy, pin.cursor = False, None, None
            if fairy is not None and fairy.is_valid:
                self._parked.park(fairy, cursor)
            elif fairy is not None:
                fairy.close()

    def _pinned_here(self) -> bool:
        # a pin inherited through fork belongs to the parent's engine
        return getattr(self._pin, "active", False) and self._pin.pid == os.getpid()

    def dispose(self) -> None:
        self._parked.close()
        if self._pid == os.getpid():
            for engine in (self._engine, self._autocommit_engine):
                if engine is not None:
                    engine.dispose()
        self._engine = None
        self._autocommit_engine = None

    # --- migrations ----------------------------------------------------------

    @property
    def schema_checked(self) -> bool:
        """Whether ensure_schema() has run to its end in this process."""
        return self._migrated

    def ensure_schema(self) -> None:
        """Once per process: migrate (auto-migration on), or check that the
        schema is the one this code expects and say what to do if not."""
        if self._migrated:
            return
        if self.auto_migrate:
            self.migrate()
        else:
            self.check_schema()

    def check_schema(self) -> str:
        """The schema's revision, when it is this code's; SchemaError
        otherwise. Reads one row: no lock, no DDL."""
        head = _newest_revision(self.history) or _head(_alembic_config(self.history))
        with self.engine.connect() as conn:
            revision = self._current_revision(conn)
            conn.rollback()
        if revision != head:
            raise self._mismatch(revision, head, migrating=False)
        self._migrated = True
        return revision

    def migrate(self) -> str:
        """Bring durable's tables to the newest revision; safe from many
        processes at once (they queue on a lock, for at most
        migration_lock_timeout_seconds). A schema already at this code's
        newest revision costs one read, without importing Alembic (a
        quarter of a second at every worker start)."""
        if self._at_newest_revision():
            self._migrated = True
            return _newest_revision(self.history) or ""
        from alembic import command

        config = _alembic_config(self.history)
        head = _head(config)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        with self._migration_lock() as conn:
            revision = self._current_revision(conn)
            if revision != head:
                if revision is not None and revision not in _revisions(config):
                    raise self._mismatch(revision, head, migrating=True)
                config.attributes["connection"] = conn
                try:
                    command.upgrade(config, "head")
                except DBAPIError as exc:
                    if _is_lock_timeout(exc):
                        raise SchemaError(
                            f"migrating {self._where()} waited over {self.migration_lock_timeout_seconds:g} s "
                            "for a lock on durable's tables (a long transaction holds them): "
                            "try again when it ends, or raise DURABLE_MIGRATION_LOCK_TIMEOUT_SECONDS"
                        ) from exc
                    raise
                conn.commit()
            revision = self._current_revision(conn)
        self._migrated = True
        return revision or ""

    def _mismatch(self, revision: str | None, head: str, migrating: bool) -> SchemaError:
        where = self._where()
        if revision is None:
            return SchemaError(
                f"durable's tables ({self.history.version_table}) do not exist in {where}: run "
                "`durable migrate` once (auto-migration is off for this database; "
                "DURABLE_AUTO_MIGRATE=1 turns it on)"
            )
        if revision in _revisions(_alembic_config(self.history)):
            return SchemaError(
                f"durable's tables in {where} are at revision {revision}, and this version of durable "
                f"needs {head}: run `durable migrate` (auto-migration is off for this database)"
            )
        return SchemaError(
            f"durable's tables in {where} are at revision {revision}, newer than this version of "
            f"durable knows (its newest is {head}): this process runs older code than the one that "
            "migrated the database; upgrade durable here" + ("" if migrating else " before starting it")
        )

    def _where(self) -> str:
        return self.url.split("@")[-1]  # no credentials in messages

    @staticmethod
    def head_revision(history: SchemaHistory = SYSTEM_TABLES) -> str:
        return _head(_alembic_config(history))

    def _at_newest_revision(self) -> bool:
        """Whether the schema is at this code's newest revision (then there
        is nothing to migrate: Alembic writes the revision in the
        migration's transaction). False when unsure."""
        newest = _newest_revision(self.history)
        if newest is None:
            return False
        with self.engine.connect() as conn:
            revision = self._current_revision(conn)
            conn.rollback()
        return revision == newest

    def _current_revision(self, conn: Connection) -> str | None:
        table = self.history.version_table
        if self.dialect_name == "postgresql":
            # the table looked up as the SELECT below finds it (search_path), in
            # a plain query: SQLAlchemy's inspector compiles a catalog query
            # first (~12 ms of CPU at a worker's start)
            exists = conn.execute(text("SELECT to_regclass(:table) IS NOT NULL"), {"table": table}).scalar()
        else:
            exists = inspect(conn).has_table(table)
        if not exists:
            return None
        revision: str | None = conn.execute(text(f"SELECT version_num FROM {table}")).scalar()
        return revision

    @contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        timeout = self.migration_lock_timeout_seconds
        busy = SchemaError(
            f"could not take the migration lock on {self._where()} within {timeout:g} s: another "
            "process is migrating (or hung while migrating); try again, or raise "
            "DURABLE_MIGRATION_LOCK_TIMEOUT_SECONDS"
        )
        if self.is_sqlite:
            engine = self.engine  # creates the file's folder: a fresh DURABLE_HOME has none
            lock_path = self.url.split("///", 1)[-1] + f".{self.history.version_table}.lock"
            with open(lock_path, "w") as lock_file:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise busy from None
                        time.sleep(0.05)
                with engine.connect() as conn:
                    yield conn
            return
        with self.engine.connect() as conn:
            # lock_timeout bounds the wait for the advisory lock and for the
            # DDL's table locks alike
            conn.execute(text(f"SET lock_timeout = '{int(timeout * 1000)}ms'"))
            try:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.history.lock_id})
            except DBAPIError as exc:
                conn.rollback()
                conn.execute(text("RESET lock_timeout"))
                conn.commit()
                if _is_lock_timeout(exc):
                    raise busy from exc
                raise
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.history.lock_id})
                conn.execute(text("RESET lock_timeout"))
                conn.commit()


def _is_lock_timeout(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available


def _revisions(config: Any) -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def _alembic_config(history: SchemaHistory) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(history.script_location))
    config.attributes["version_table"] = history.version_table
    return config


def _newest_revision(history: SchemaHistory) -> str | None:
    """The newest revision of a line of migrations, read from the
    `revision` and `down_revision` assignments of its files: what Alembic's
    `get_current_head` answers, without importing Alembic. None when the
    files do not make one line (Alembic then decides)."""
    revises: dict[str, object] = {}
    for path in sorted((history.script_location / "versions").glob("*.py")):
        values: dict[str, object] = {}
        for node in _statements_to_revisions(path.read_text()):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in ("revision", "down_revision"):
                    try:
                        values[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        return None
        if "revision" in values:
            revises[str(values["revision"])] = values.get("down_revision")
    heads = set(revises) - set(revises.values())
    return heads.pop() if len(heads) == 1 else None


# a line of a migration that assigns its revision, or the one it revises
_REVISION_LINE = re.compile(r"^(?:down_)?revision\s*=.*$", re.MULTILINE)


def _statements_to_revisions(source: str) -> list[ast.stmt]:
    """A migration's top-level statements, up to its `revision = ...` and
    `down_revision = ...` lines (Alembic's template writes them after the
    docstring and the imports): parsed alone, those cost a tenth of the
    whole module (~9 ms for durable's migrations at every worker start).
    All of them when that part does not parse alone."""
    lines = list(_REVISION_LINE.finditer(source))
    if lines:
        try:
            return ast.parse(source[:lines[-1].end()]).body
        except SyntaxError:
            pass
    return ast.parse(source).body


def _head(config: Any) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config).get_current_head() or ""


def _kept_cursor(fairy: Any) -> Any:
    """The cursor kept with a pooled connection (creating one each time cost
    a fifth of a checkout)."""
    driver = fairy.driver_connection
    assert driver is not None  # a checked-out connection has one
    cursor = fairy.info.get("durable.cursor")
    if cursor is None or cursor.closed or cursor.connection is not driver:
        cursor = fairy.info["durable.cursor"] = driver.cursor()
    return cursor


def _close_quietly(cursor: Any) -> None:
    try:
        cursor.close()
    except Exception:  # noqa: BLE001 - its connection may be gone already
        pass


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: a deferred transaction that later
        # writes can fail with "database is locked" instead of waiting.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def retry_while_unavailable(
    operation: Callable[[], T],
    what: str,
    give_up_after_seconds: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> T:
    """Run `operation`, waiting out a database that is down (restart,
    failover) or busy (a lock conflict).

    A checkpoint is never dropped: the worker waits, and its Celery message
    stays unacknowledged until the write commits or the lease is lost.
    """
    backoff = Backoff(0.05, 2.0, jitter=True)
    started = clock.monotonic()
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            waited = clock.monotonic() - started
            if give_up_after_seconds is not None and waited > give_up_after_seconds:
                raise
            logger.warning("database unavailable during %s (%.1fs so far): %s", what, waited, exc)
            clock.sleep(backoff.next_pause())
