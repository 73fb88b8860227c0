"""Alembic environment for durable's own tables (run by `durable migrate`,
and automatically on first use). The connection is passed in by
`durable.migrate`; the version table is durable's own so that an application
using Alembic for its tables is not disturbed."""

from alembic import context

from durable.schema import metadata

VERSION_TABLE = "durable_alembic_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
