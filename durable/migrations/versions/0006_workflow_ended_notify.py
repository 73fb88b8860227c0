"""Postgres: a workflow's end notifies the channel `durable_workflow_ended`
with its ID, from a trigger, in the ending transaction (a client waiting
for a result LISTENs instead of polling). Nothing on SQLite.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION durable_notify_workflow_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('durable_workflow_ended', NEW.workflow_id);
    RETURN NULL;
END
$$"""

TRIGGER = """
CREATE TRIGGER durable_workflow_ended
AFTER UPDATE OF status ON durable_workflows
FOR EACH ROW
WHEN (OLD.status IN ('ENQUEUED', 'PENDING') AND NEW.status NOT IN ('ENQUEUED', 'PENDING'))
EXECUTE PROCEDURE durable_notify_workflow_ended()"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS durable_workflow_ended ON durable_workflows")
    op.execute("DROP FUNCTION IF EXISTS durable_notify_workflow_ended()")
