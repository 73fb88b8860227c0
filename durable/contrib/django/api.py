"""The client a Django project uses, from its settings, and `enqueue`."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from django.conf import settings as django_settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import transaction as django_transaction
from sqlalchemy.engine import URL

from ...client import DurableClient, WorkflowHandle
from ...in_transaction import CommitHook
from ...settings import Settings


def _config() -> dict[str, Any]:
    return dict(getattr(django_settings, "DURABLE", None) or {})


def database_alias() -> str:
    """The Django database durable shares (DURABLE["DATABASE"])."""
    return str(_config().get("DATABASE") or DEFAULT_DB_ALIAS)


def database_url_of(alias: str) -> str:
    """A SQLAlchemy URL for a Django database (Postgres or SQLite)."""
    db = connections[alias].settings_dict
    engine = db["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if not engine.endswith(("postgresql", "postgis")):
        raise ValueError(f"durable runs on Postgres or SQLite; Django database {alias!r} is {engine}")
    return URL.create(
        "postgresql+psycopg", username=db.get("USER") or None, password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None, port=int(db["PORT"]) if db.get("PORT") else None,
        database=db.get("NAME") or None,
    ).render_as_string(hide_password=False)


@functools.lru_cache(maxsize=1)
def get_client() -> DurableClient:
    """This process's client: DURABLE_* from the environment, overridden by
    settings.DURABLE; its database is Django's DURABLE["DATABASE"] unless
    DURABLE["DATABASE_URL"] names another."""
    config = _config()
    url = config.get("DATABASE_URL") or database_url_of(database_alias())
    return DurableClient(settings=Settings.from_env().with_overrides(
        database_url=url, broker_url=config.get("BROKER_URL"),
    ))


def enqueue(
    workflow_name: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    transaction: bool = False,
    using: str | None = None,
    **options: Any,
) -> WorkflowHandle:
    """`DurableClient.enqueue` with the project's client. With
    `transaction=True`, inside `transaction.atomic(using=...)`: the row is
    written on that Django connection, in the block's transaction, and
    published from `transaction.on_commit`. Other options (workflow_id,
    queue, dedup_key, priority, timeout, on_duplicate, allow_unknown, ...)
    are `enqueue`'s."""
    client = get_client()
    if not transaction:
        return client.enqueue(workflow_name, args, kwargs, **options)
    alias = using or database_alias()
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise ValueError(
            "enqueue(..., transaction=True) joins the current transaction.atomic() block "
            f"of database {alias!r}, and there is none"
        )
    connection.ensure_connection()
    hook = CommitHook(
        connection.connection,
        lambda callback: django_transaction.on_commit(callback, using=alias),
    )
    return client.enqueue(workflow_name, args, kwargs, transaction=hook, **options)
