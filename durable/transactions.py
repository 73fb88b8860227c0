"""`@transaction` steps: the user's writes and the step's outcome commit in
one database transaction, so the step takes effect exactly once.

When the application database is the system database, the outcome is the
ordinary step row. When it is another database, an outputs table there
(`durable_transaction_outputs`, created by `ensure_outputs_table`) records
the outcome inside the user's transaction; the step row in the system
database is written after, and a replay that finds the output but no step
row copies it over instead of running the function again.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import BigInteger, Column, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from . import serialization as ser
from .database import Database, is_unavailable

if TYPE_CHECKING:
    from .app import Durable, StepFunction
    from .engine import Execution

logger = logging.getLogger("durable.transactions")

outputs_metadata = MetaData()
transaction_outputs = Table(
    "durable_transaction_outputs",
    outputs_metadata,
    Column("workflow_id", String(255), nullable=False),
    Column("step_id", Integer, nullable=False),
    Column("output", Text, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("workflow_id", "step_id", name="pk_durable_transaction_outputs"),
)

# SQLSTATEs worth retrying: serialization failure and deadlock.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}
_MAX_CONFLICT_RETRIES = 10


def check_transaction_signature(fn: Callable[..., Any]) -> None:
    """Reject at decoration time a function that cannot take the session."""
    if not callable(fn):
        raise TypeError(f"@transaction needs a function, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"@transaction function {fn.__qualname__} must not be async: the session is synchronous")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"@transaction cannot inspect {fn!r}: {exc}") from exc
    positional = [
        p for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                      inspect.Parameter.VAR_POSITIONAL)
    ]
    if not positional:
        raise TypeError(
            f"@transaction function {fn.__qualname__} must take a SQLAlchemy Session as its "
            f"first positional parameter, e.g. def {fn.__name__}(session, ...)"
        )


def _is_retryable_conflict(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    # SQLite reports a busy writer instead of a serialization failure
    return sqlstate in _RETRYABLE_SQLSTATES or "database is locked" in str(exc.orig).lower()


def _call_in_session(conn: Any, step: "StepFunction", args: Any, kwargs: Any) -> Any:
    """Run the function with a Session inside `conn`'s transaction. The session
    works in a savepoint (so its own commit/rollback stay inside the step);
    committing it releases the savepoint into the outer transaction, which
    the caller commits together with the outcome. Closing a session with an
    open savepoint would roll the user's writes back."""
    session = Session(bind=conn, join_transaction_mode="create_savepoint")
    try:
        result = step.fn(session, *args, **kwargs)
        session.commit()
        return result
    finally:
        session.close()


class _Unwritten(Exception):
    """The checkpoint could not be written: roll the user's writes back."""


class Transactions:
    def __init__(self, durable: "Durable"):
        self.durable = durable
        settings = durable.settings
        self.separate = bool(settings.app_database_url) and (
            settings.app_database_url != settings.resolved_database_url
        )
        self.app_db = Database(settings.app_database_url) if self.separate else durable.store.db
        self._outputs_ready = False

    def ensure_outputs_table(self) -> None:
        if self.separate and not self._outputs_ready:
            try:
                outputs_metadata.create_all(self.app_db.engine, checkfirst=True)
            except DBAPIError:
                # Another worker created it between our check and our CREATE
                # (Postgres reports a duplicate pg_type row); fine if it exists now.
                if not sa_inspect(self.app_db.engine).has_table(transaction_outputs.name):
                    raise
            self._outputs_ready = True

    def run_outside(self, step: "StepFunction", args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called outside a workflow: an ordinary transaction, no checkpoint."""
        with self._session() as session:
            result = step.fn(session, *args, **kwargs)
            session.commit()
            return result

    def _session(self, isolation: str | None = None) -> Session:
        engine = self.app_db.engine
        if isolation:
            engine = engine.execution_options(isolation_level=isolation)  # type: ignore[assignment]
        return Session(bind=engine)

    def run(
        self,
        execution: "Execution",
        step: "StepFunction",
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        success_values: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        """Run the function and commit its writes with the outcome. Returns
        (result, existing row written by another execution, or None)."""
        delay = 0.01
        conflicts = 0
        outage_delay = 0.05
        while True:
            try:
                if self.separate:
                    return self._run_separate(execution, step, args, kwargs, success_values)
                return self._run_same(execution, step, args, kwargs, success_values)
            except Exception as exc:
                if conflicts < _MAX_CONFLICT_RETRIES and _is_retryable_conflict(exc):
                    conflicts += 1
                    logger.info("transaction %s conflicted (%s); retrying", step.name, exc)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
                    continue
                if is_unavailable(exc):
                    # The database went away mid-transaction (restart, failover):
                    # not the step's failure. Either nothing committed, or the
                    # outcome did (then the re-run finds it and its own writes roll
                    # back), so wait for the database and run the transaction again.
                    logger.warning("database unavailable during transaction %s: %s", step.name, exc)
                    time.sleep(outage_delay * (0.5 + random.random() / 2))
                    outage_delay = min(outage_delay * 2, 2.0)
                    continue
                raise

    def _run_same(
        self, execution: "Execution", step: "StepFunction", args: Any, kwargs: Any,
        success_values: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        db = self.app_db
        db.ensure_schema()
        engine = db.engine
        if step.isolation:
            engine = engine.execution_options(isolation_level=step.isolation)  # type: ignore[assignment]
        try:
            with engine.connect() as conn:
                with conn.begin():
                    result = _call_in_session(conn, step, args, kwargs)
                    output = ser.dumps(result)
                    values = {"workflow_id": execution.workflow_id, **success_values(output)}
                    if not execution.store.write_step(execution.epoch, values, conn=conn):
                        raise _Unwritten()
        except _Unwritten:
            return None, execution._diagnose_unwritten(values["step_id"])
        return result, None

    def _run_separate(
        self, execution: "Execution", step: "StepFunction", args: Any, kwargs: Any,
        success_values: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        self.ensure_outputs_table()
        probe = success_values("null")
        step_id = probe["step_id"]
        recorded = self._recorded_output(execution.workflow_id, step_id)
        if recorded is None:
            engine = self.app_db.engine
            if step.isolation:
                engine = engine.execution_options(isolation_level=step.isolation)  # type: ignore[assignment]
            try:
                with engine.connect() as conn:
                    with conn.begin():
                        result = _call_in_session(conn, step, args, kwargs)
                        output = ser.dumps(result)
                        conn.execute(transaction_outputs.insert().values(
                            workflow_id=execution.workflow_id, step_id=step_id, output=output,
                            created_at_ms=int(time.time() * 1000),
                        ))
            except IntegrityError:
                # Another execution of this step committed first (its outputs
                # row holds the key): our writes are rolled back, use its result.
                recorded = self._recorded_output(execution.workflow_id, step_id)
                if recorded is None:
                    raise
        if recorded is not None:
            output = recorded
            result = ser.loads(recorded)
        existing = execution._checkpoint(success_values(output))
        return result, existing

    def _recorded_output(self, workflow_id: str, step_id: int) -> str | None:
        with self.app_db.engine.connect() as conn:
            row = conn.execute(
                select(transaction_outputs.c.output).where(
                    transaction_outputs.c.workflow_id == workflow_id,
                    transaction_outputs.c.step_id == step_id,
                )
            ).first()
        return None if row is None else row[0]
