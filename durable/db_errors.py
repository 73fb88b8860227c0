"""One place that says what a database error means, from its SQLSTATE
(Postgres) or result code (SQLite) and the driver's exception type, never
from its message text.

- UNAVAILABLE: the server cannot be reached or is going away (restart,
  failover, too many connections): wait and run the operation again.
- CONFLICT: another transaction won a race (serialization failure,
  deadlock, a SQLite writer holding the lock): run the transaction again.
- OTHER: the statement itself is wrong or violates a constraint: raise.
"""

from __future__ import annotations

import enum
import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError


class DbErrorKind(enum.Enum):
    UNAVAILABLE = "unavailable"
    CONFLICT = "conflict"
    OTHER = "other"


# Postgres SQLSTATEs. Class 08 is "connection exception".
_PG_UNAVAILABLE_CLASSES = ("08",)
_PG_UNAVAILABLE = {
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
    "53300",  # too_many_connections
    "53000",  # insufficient_resources
}
_PG_CONFLICT = {"40001", "40P01"}  # serialization_failure, deadlock_detected

# SQLite primary result codes (the low byte of the extended code).
_SQLITE_CONFLICT = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_SQLITE_UNAVAILABLE = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL}


def classify(exc: BaseException) -> DbErrorKind:
    """What `exc` (a SQLAlchemy error or the driver's own) means for a retry."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return DbErrorKind.UNAVAILABLE
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.Error):
        return _classify_postgres(exc)
    if isinstance(exc, sqlite3.Error):
        return _classify_sqlite(exc)
    return DbErrorKind.OTHER


def _classify_postgres(exc: psycopg.Error) -> DbErrorKind:
    sqlstate = exc.sqlstate
    if sqlstate is None:
        # No SQLSTATE: the client library failed, not the server (connection
        # refused, server closed the connection, broken socket).
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return DbErrorKind.UNAVAILABLE
        return DbErrorKind.OTHER
    if sqlstate in _PG_CONFLICT:
        return DbErrorKind.CONFLICT
    if sqlstate in _PG_UNAVAILABLE or sqlstate[:2] in _PG_UNAVAILABLE_CLASSES:
        return DbErrorKind.UNAVAILABLE
    return DbErrorKind.OTHER


def _classify_sqlite(exc: sqlite3.Error) -> DbErrorKind:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return DbErrorKind.OTHER
    primary = code & 0xFF
    if primary in _SQLITE_CONFLICT:
        return DbErrorKind.CONFLICT
    if primary in _SQLITE_UNAVAILABLE:
        return DbErrorKind.UNAVAILABLE
    return DbErrorKind.OTHER


def is_unavailable(exc: BaseException) -> bool:
    return classify(exc) is DbErrorKind.UNAVAILABLE


def is_conflict(exc: BaseException) -> bool:
    return classify(exc) is DbErrorKind.CONFLICT


def is_transient(exc: BaseException) -> bool:
    """Worth running again as it is: the database was away or busy."""
    return classify(exc) is not DbErrorKind.OTHER
