"""All SQL durable runs against its own tables, one module per concern:
the execution path (claim, checkpoints, end), leases, moving a workflow to
another queue, the sweeper's queries, management (status, cancel, resume,
fork), and messages and events."""

from __future__ import annotations

from .base import DedupConflict, StartResult
from .breakers import BreakerSql
from .execution import Claim, ExecutionSql
from .execution_statements import claimed_columns, crash_text
from .flow import HELD, NOT_GATED, FlowSql
from .leases import LeaseSql
from .management import ManagementSql
from .messages import Doorbell, MessagesSql
from .prebuilt import Prebuilt
from .rerouting import ReroutingSql
from .retention import RetentionSql
from .schedules import ScheduleSql
from .sweeps import SweepSql

__all__ = ["HELD", "NOT_GATED", "Claim", "DedupConflict", "Doorbell", "StartResult", "Store", "claimed_columns", "crash_text"]


class Store(
    ReroutingSql, FlowSql, ExecutionSql, LeaseSql, SweepSql, RetentionSql, ManagementSql, MessagesSql,
    ScheduleSql, BreakerSql,
):
    """The system database, as the engine, the sweeper and the client use it.

    Messages, events and event waiters reference their workflow with ON DELETE
    CASCADE, so `delete_workflows` removes them too."""

    def warm_up(self) -> None:
        """Open this process's connection and compile the statements built
        with the store (the claim, the end, ...) before a workflow needs
        them: a pool child just forked does so while its worker is still
        connecting to the broker, not on its first workflow (~50 ms). Those
        its worker's main process compiled before forking it
        (`compile_statements`) are compiled already."""
        if self.db.is_sqlite:
            return
        with self.db.driver_cursor() as cursor:
            cursor.execute("SELECT 1")
        self.compile_statements()

    def compile_statements(self) -> None:
        """Compile the statements built with the store now (Postgres; ~2 ms
        each, ~30 ms for all). A worker's main process does so before its
        pool forks, so that the children inherit them compiled."""
        for value in list(vars(self).values()):
            for statement in value.values() if isinstance(value, dict) else [value]:
                if isinstance(statement, Prebuilt):
                    statement.prepare()

    def copy_steps(self, source_id: str, target_id: str, below_step_id: int) -> int:
        """Fork: copy the checkpoints, then give the fork the events its copied
        set_event steps published (messages are not copied: the copied recv
        checkpoints hold what the source received)."""
        copied = super().copy_steps(source_id, target_id, below_step_id)
        self.restore_events(target_id)
        return copied
