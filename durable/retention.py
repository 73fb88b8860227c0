"""Retention: ended workflows deleted some time after they ended, with
their steps, messages, events and transaction outputs, in small batches.

Run by every worker's sweeper when DURABLE_RETENTION is set, and on demand
(`Durable.gc`, `durable gc`). A batch is whole trees: a root workflow that
ended before the cutoff and all its descendants, none of them running (a
tree with a running child waits). Each batch is one short transaction, so
deleting many rows never holds a long lock; batches from several sweepers
at once delete the same rows at most once.
"""

from __future__ import annotations

import logging
from typing import Sequence

from sqlalchemy import delete

from .database import Database
from .schema import transaction_outputs
from .settings import Settings
from .store import Store

logger = logging.getLogger("durable.retention")

BATCH_ROOTS = 500  # root workflows per batch (with their descendants)
SWEEP_EVERY_MS = 60_000  # a sweeper collects at most this often
SWEEP_MAX_BATCHES = 5  # ... and this many batches at a time


def collect_garbage(
    store: Store,
    app_db: Database | None,
    cutoff_ms: int,
    statuses: Sequence[str] | None = None,
    batch_roots: int = BATCH_ROOTS,
    max_batches: int | None = None,
) -> int:
    """Delete ended workflow trees that ended before `cutoff_ms`; returns
    how many workflows were deleted. `app_db`: a separate application
    database whose transaction outputs go too (first: a failure there
    leaves the workflows for the next run)."""
    deleted = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        ids = store.old_trees(cutoff_ms, statuses, batch_roots)
        if not ids:
            break
        if app_db is not None:
            with app_db.begin() as conn:
                conn.execute(delete(transaction_outputs).where(transaction_outputs.c.workflow_id.in_(ids)))
        store.delete_workflows(ids)
        deleted += len(ids)
        batches += 1
    return deleted


def separate_app_database(settings: Settings) -> Database | None:
    """The application database, when @transaction steps write to one of their own."""
    if not settings.app_database_url or settings.app_database_url == settings.resolved_database_url:
        return None
    return Database(settings.app_database_url)
