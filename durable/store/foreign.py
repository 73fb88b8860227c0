"""SQL run on a connection that is not durable's own: the caller's, inside
the caller's transaction (`DurableClient.enqueue(..., transaction=...)`).

Two kinds of connection: a SQLAlchemy `Connection` (a Session's included),
and a bare psycopg connection, which gets the same statements compiled for
its driver. Nothing here commits: the caller's commit does.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import bindparam, or_, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from ..records import Status
from ..schema import workflows
from .base import DedupConflict, StartResult, W, insert_params

# Which database a connection is in: the name, the database's OID and when
# its server started. The same for every connection to one database of one
# running server, whatever address, port or pooler the connection went
# through; two databases, or two servers, never share all three.
_POSTGRES_IDENTITY = (
    "SELECT current_database(), "
    "(SELECT oid FROM pg_database WHERE datname = current_database())::bigint, "
    "pg_postmaster_start_time()::text"
)


def database_identity(conn: Connection) -> tuple[Any, ...]:
    """What makes this connection's database the one it is (see above); on
    SQLite, the main database file's real path."""
    if conn.dialect.name == "sqlite":
        files = conn.execute(text("PRAGMA database_list")).all()
        main = next((row[2] for row in files if row[1] == "main"), "")
        return ("sqlite", os.path.realpath(main) if main else ":memory:")
    row = conn.execute(text(_POSTGRES_IDENTITY)).one()
    return ("postgresql", *row)


def driver_database_identity(cursor: Any) -> tuple[Any, ...]:
    """`database_identity` for a psycopg cursor."""
    cursor.execute(_POSTGRES_IDENTITY)
    return ("postgresql", *cursor.fetchone())


def _insert(columns: tuple[str, ...], insert: Any = postgresql.insert) -> Any:
    return (
        insert(workflows)
        .values({c: bindparam(f"v_{c}", type_=W[c].type) for c in columns})
        .on_conflict_do_nothing(index_elements=["workflow_id"])
        .returning(W.workflow_id)
    )


def _holder_query() -> Any:
    return select(W.workflow_id).where(
        W.queue == bindparam("queue"), W.dedup_key == bindparam("dedup_key"),
        # not IN (...): its expanding parameter does not compile ahead of time
        or_(W.status == Status.ENQUEUED.value, W.status == Status.PENDING.value),
    )


def insert_workflow_on(
    conn: Connection, row: dict[str, Any], sqlite: bool
) -> StartResult:
    """Insert a workflow row on the caller's SQLAlchemy connection; with a
    dedup key, in a savepoint: a held one raises DedupConflict and leaves
    the caller's transaction usable. The holder is looked up on the same
    connection (on SQLite, durable's own connection would wait for the
    caller's write lock)."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect
    from sqlalchemy.exc import IntegrityError

    values = insert_params(row)
    stmt = _insert(tuple(sorted(k[2:] for k in values)), sqlite_dialect.insert if sqlite else postgresql.insert)
    if row.get("dedup_key") is None:  # nothing can conflict but the ID, which ON CONFLICT absorbs
        return StartResult(created=conn.execute(stmt, values).first() is not None, workflow_id=row["workflow_id"])
    try:
        with conn.begin_nested():  # two round trips more, for the dedup key's possible conflict
            inserted = conn.execute(stmt, values).first()
    except IntegrityError:
        holder = conn.execute(
            _holder_query(), {"queue": row["queue"], "dedup_key": row["dedup_key"]}
        ).scalar()
        raise DedupConflict(holder) from None
    return StartResult(created=inserted is not None, workflow_id=row["workflow_id"])


_driver_statements: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}


def _driver_sql(statement: Any) -> tuple[str, dict[str, Any]]:
    compiled = statement.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
    return compiled.string, dict(compiled.params)


def insert_workflow_driver(psycopg_conn: Any, row: dict[str, Any]) -> StartResult:
    """`insert_workflow_on` for a psycopg connection already in a
    transaction: the same statement, compiled for psycopg, in a savepoint."""
    import psycopg

    params = insert_params(row)
    columns = tuple(sorted(k[2:] for k in params))
    compiled = _driver_statements.get(columns)
    if compiled is None:
        compiled = _driver_statements[columns] = _driver_sql(_insert(columns))
    sql, constants = compiled
    values = {**constants, **params}
    if row.get("dedup_key") is None:  # nothing can conflict but the ID, which ON CONFLICT absorbs
        with psycopg_conn.cursor() as cursor:
            cursor.execute(sql, values)
            return StartResult(created=cursor.fetchone() is not None, workflow_id=row["workflow_id"])
    try:
        with psycopg_conn.transaction():  # a savepoint: the caller's transaction is open
            with psycopg_conn.cursor() as cursor:
                cursor.execute(sql, values)
                inserted = cursor.fetchone()
    except psycopg.errors.UniqueViolation:
        holder_sql, holder_constants = _driver_sql(_holder_query())
        with psycopg_conn.cursor() as cursor:
            cursor.execute(
                holder_sql, {**holder_constants, "queue": row["queue"], "dedup_key": row["dedup_key"]}
            )
            found = cursor.fetchone()
        raise DedupConflict(found[0] if found else None) from None
    return StartResult(created=inserted is not None, workflow_id=row["workflow_id"])
