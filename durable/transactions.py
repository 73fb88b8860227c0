"""`@transaction` steps: the user's writes and the step's outcome commit in
one database transaction, so the step takes effect exactly once.

When the application database is the system database, the outcome is the
ordinary step row. When it is another database, an outputs table there
(`durable_transaction_outputs`, migrated with the application database's own
Alembic history) records the outcome inside the user's transaction; the
step row in the system database is written after, and a replay that finds
the output but no step row copies it over instead of running the function
again.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from . import serialization as ser
from .clock import SYSTEM_CLOCK, Clock
from .database import APP_TABLES, Database
from .db_errors import DbErrorKind, classify
from .engine import Execution
from .step_protocol import Position, Step
from .retry import Backoff
from .schema import transaction_outputs
from .settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger("durable.transactions")

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


def load_orm() -> type["Session"]:
    """SQLAlchemy's ORM (its Session), which a process loads only once it
    has a @transaction step: 0.12-0.18 s of CPU at a worker's
    start. Declaring the step loads it, so a worker's pool children
    inherit it rather than each loading it on its first transaction."""
    from sqlalchemy.orm import Session

    return Session


def _call_in_session(conn: Any, step: Step, args: Any, kwargs: Any) -> Any:
    """Run the function with a Session inside `conn`'s transaction. The session
    works in a savepoint (so its own commit/rollback stay inside the step);
    committing it releases the savepoint into the outer transaction, which
    the caller commits together with the outcome. Closing a session with an
    open savepoint would roll the user's writes back."""
    session = load_orm()(bind=conn, join_transaction_mode="create_savepoint")
    try:
        result = step.fn(session, *args, **kwargs)
        session.commit()
        return result
    finally:
        session.close()


class _Unwritten(Exception):
    """The checkpoint could not be written: roll the user's writes back."""


class Transactions:
    """The engine's `TransactionalSteps`, on the application database."""

    def __init__(self, settings: Settings, system_db: Database, clock: Clock = SYSTEM_CLOCK):
        self.clock = clock
        self.separate = bool(settings.app_database_url) and (
            settings.app_database_url != settings.resolved_database_url
        )
        self.app_db = Database(
            settings.app_database_url, history=APP_TABLES, auto_migrate=settings.auto_migrate,
            migration_lock_timeout_seconds=settings.migration_lock_timeout_seconds,
        ) if self.separate else system_db

    def run_outside(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called outside a workflow: an ordinary transaction, no checkpoint."""
        with load_orm()(bind=self._engine(step)) as session:
            result = step.fn(session, *args, **kwargs)
            session.commit()
            return result

    def _engine(self, step: Step) -> Engine:
        self.app_db.ensure_schema()
        engine = self.app_db.engine
        if step.isolation:
            engine = engine.execution_options(isolation_level=step.isolation)
        return engine

    def run(
        self,
        execution: Execution,
        step: Step,
        position: Position,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        success: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        """Run the function and commit its writes with the outcome. Returns
        (result, the outcome another execution recorded first, or None)."""
        conflicts = Backoff(0.01, 1.0, jitter=True)
        outage = Backoff(0.05, 2.0, jitter=True)
        while True:
            try:
                if self.separate:
                    return self._run_separate(execution, step, position, args, kwargs, success)
                return self._run_same(execution, step, position, args, kwargs, success)
            except Exception as exc:
                kind = classify(exc)
                if kind is DbErrorKind.CONFLICT and conflicts.pauses < _MAX_CONFLICT_RETRIES:
                    logger.info("transaction %s conflicted (%s); retrying", step.name, exc)
                    self.clock.sleep(conflicts.next_pause())
                    continue
                if kind is DbErrorKind.UNAVAILABLE:
                    # The database went away mid-transaction (restart, failover):
                    # not the step's failure. Either nothing committed, or the
                    # outcome did (then the re-run finds it and its own writes roll
                    # back), so wait for the database and run the transaction again.
                    logger.warning("database unavailable during transaction %s: %s", step.name, exc)
                    self.clock.sleep(outage.next_pause())
                    continue
                raise

    def _run_same(
        self, execution: Execution, step: Step, position: Position, args: Any,
        kwargs: Any, success: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        try:
            with self._engine(step).connect() as conn:
                with conn.begin():
                    result = _call_in_session(conn, step, args, kwargs)
                    if not execution.write(success(ser.dumps(result)), conn=conn):
                        raise _Unwritten()
        except _Unwritten:
            return None, execution.resolve_conflict(position.step_id)
        return result, None

    def _run_separate(
        self, execution: Execution, step: Step, position: Position, args: Any,
        kwargs: Any, success: Callable[[str], dict[str, Any]],
    ) -> tuple[Any, dict[str, Any] | None]:
        recorded = self._recorded_output(execution.workflow_id, position.step_id)
        if recorded is None:
            try:
                with self._engine(step).connect() as conn:
                    with conn.begin():
                        result = _call_in_session(conn, step, args, kwargs)
                        output = ser.dumps(result)
                        conn.execute(transaction_outputs.insert().values(
                            workflow_id=execution.workflow_id, step_id=position.step_id,
                            output=output, created_at_ms=self.clock.now_ms(),
                        ))
            except IntegrityError:
                # Another execution of this step committed first (its outputs
                # row holds the key): our writes are rolled back, use its result.
                recorded = self._recorded_output(execution.workflow_id, position.step_id)
                if recorded is None:
                    raise
        if recorded is not None:
            output = recorded
            result = ser.loads(recorded)
        return result, execution.record(success(output))

    def _recorded_output(self, workflow_id: str, step_id: int) -> str | None:
        self.app_db.ensure_schema()
        with self.app_db.engine.connect() as conn:
            row = conn.execute(
                select(transaction_outputs.c.output).where(
                    transaction_outputs.c.workflow_id == workflow_id,
                    transaction_outputs.c.step_id == step_id,
                )
            ).first()
        return None if row is None else row[0]
