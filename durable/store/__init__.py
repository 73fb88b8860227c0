"""All SQL durable runs against its own tables, one module per concern:
the execution path (claim, lease, checkpoints, end), the sweeper's queries,
and management (status, cancel, resume, fork)."""

from __future__ import annotations

from .base import DedupConflict, StartResult
from .execution import Claim, ExecutionSql, crash_text
from .management import ManagementSql
from .sweeps import SweepSql

__all__ = ["Claim", "DedupConflict", "StartResult", "Store", "crash_text"]


class Store(ExecutionSql, SweepSql, ManagementSql):
    """The system database, as the engine, the sweeper and the client use it."""
