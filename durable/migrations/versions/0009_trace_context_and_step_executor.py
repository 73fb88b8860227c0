"""A workflow keeps the trace context it was started in (durable/tracing.py);
a step row names the process that ran it.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("durable_workflows") as batch:
        batch.add_column(sa.Column("trace_context", sa.Text(), nullable=True))
    with op.batch_alter_table("durable_steps") as batch:
        batch.add_column(sa.Column("executor", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("durable_steps") as batch:
        batch.drop_column("executor")
    with op.batch_alter_table("durable_workflows") as batch:
        batch.drop_column("trace_context")
