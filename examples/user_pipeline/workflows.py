"""The pipeline: a main workflow runs 10 child batches, each batch 10 pages,
each page inserts 10 generated users and then fails 40% of the time.

Two versions of the page step, same workflows:
- "plain": a @dur.step that commits its insert, then may fail. The retry
  inserts the page again, so `users_plain` (no unique constraint, like most
  staging tables) ends with duplicate users.
- "transaction": a @dur.transaction whose insert commits together with the
  step's checkpoint. A failure rolls the insert back, so `users` ends with
  exactly 1,000 rows.

Workers import this module (DURABLE_IMPORTS=examples.user_pipeline.workflows).
"""

from __future__ import annotations

import random
import time

from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

import durable
from workers.app import dur

BATCHES = 10
PAGES = 10
USERS_PER_PAGE = 10
FAILURE_RATE = 0.4

metadata = MetaData()
# The transaction version: one row per user, enforced by the primary key.
users = Table(
    "users", metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("email", String(200), nullable=False),
    Column("batch", Integer, nullable=False),
    Column("page", Integer, nullable=False),
)
# The plain version: no unique constraint, or its retries would fail forever (S2).
users_plain = Table(
    "users_plain", metadata,
    Column("row_id", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False),
    Column("name", String(100), nullable=False),
    Column("email", String(200), nullable=False),
    Column("batch", Integer, nullable=False),
    Column("page", Integer, nullable=False),
)
TABLES = {"transaction": users, "plain": users_plain}


class PageInsertFailed(Exception):
    """The simulated failure that strikes after a page's rows are written."""


def make_users(batch: int, page: int) -> list[dict]:
    """Ten users, the same every time for one page: no network, no clock."""
    rng = random.Random(f"users:{batch}:{page}")
    out = []
    for i in range(USERS_PER_PAGE):
        n = (batch * PAGES + page) * USERS_PER_PAGE + i
        first = rng.choice(["ada", "alan", "grace", "edsger", "barbara", "ken", "linus", "margaret"])
        out.append(dict(id=f"user-{n:04d}", name=f"{first.title()} {n}",
                        email=f"{first}.{n}@example.com", batch=batch, page=page))
    return out


def maybe_fail(batch: int, page: int, pause_seconds: float) -> None:
    """After the write: pause (a window for a kill to land), then fail 40% of
    attempts. Seeded by page and attempt, so a retry can succeed and a rerun of
    the whole pipeline fails the same attempts."""
    if pause_seconds:
        time.sleep(pause_seconds)
    attempt = durable.context().attempt or 0
    if random.Random(f"fail:{batch}:{page}:{attempt}").random() < FAILURE_RATE:
        raise PageInsertFailed(f"page {batch}/{page} attempt {attempt} failed after writing")


def app_engine():
    """The application database: DURABLE_APP_DATABASE_URL, else the system one."""
    return dur.transactions.app_db.engine


def ensure_tables() -> None:
    metadata.create_all(app_engine(), checkfirst=True)


def count_rows(engine, version: str) -> tuple[int, int]:
    """(rows, distinct user ids) in the version's table."""
    table = TABLES[version]
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(table)).scalar_one()
        distinct = conn.execute(select(func.count(table.c.id.distinct()))).scalar_one()
    return rows, distinct


# Back-off short and flat: the demo is about duplicates, not waiting.
RETRY = dict(retries=20, interval=0.05, backoff=1.0)


@dur.transaction(**RETRY)
def insert_page_tx(session, batch: int, page: int, pause_seconds: float = 0.0) -> int:
    rows = make_users(batch, page)
    session.execute(insert(users), rows)
    maybe_fail(batch, page, pause_seconds)  # rolls back the insert with it
    return len(rows)


@dur.step(**RETRY)
def insert_page_plain(batch: int, page: int, pause_seconds: float = 0.0) -> int:
    rows = make_users(batch, page)
    with app_engine().begin() as conn:  # commits on its own
        conn.execute(insert(users_plain), rows)
    maybe_fail(batch, page, pause_seconds)  # the retry inserts the page again
    return len(rows)


PAGE_STEPS = {"transaction": insert_page_tx, "plain": insert_page_plain}


@dur.step()
def prepare_tables() -> None:
    ensure_tables()


@dur.workflow(name="user_pipeline.batch", max_recovery_attempts=50)
def batch_workflow(version: str, batch: int, pause_seconds: float = 0.0) -> int:
    insert_page = PAGE_STEPS[version]
    return sum(insert_page(batch, page, pause_seconds) for page in range(PAGES))


@dur.workflow(name="user_pipeline", max_recovery_attempts=50)
def user_pipeline(version: str, pause_seconds: float = 0.0) -> int:
    if version not in PAGE_STEPS:
        raise ValueError(f"version must be one of {sorted(PAGE_STEPS)}, got {version!r}")
    prepare_tables()
    handles = [batch_workflow.start(version, b, pause_seconds) for b in range(BATCHES)]
    return sum(h.result() for h in handles)  # each result() suspends until that batch ends
