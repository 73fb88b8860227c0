"""Alembic environment for the one table durable keeps in an application
database of its own (`app_database_url`): the outputs of `@transaction`
steps, which must commit in the application's transaction. Its version
table is separate from the system database's."""

from alembic import context

from durable.schema import app_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=app_metadata,
    version_table=context.config.attributes["version_table"],
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
