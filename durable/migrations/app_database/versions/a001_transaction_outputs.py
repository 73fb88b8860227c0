"""The outputs of @transaction steps, in an application database of their own.

Revision ID: a001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "a001"
down_revision = None
branch_labels = None
depends_on = None

TABLE = "durable_transaction_outputs"


def upgrade() -> None:
    # Before this migration the table was created at run time: keep one
    # that is already there.
    if sa.inspect(op.get_bind()).has_table(TABLE):
        return
    op.create_table(
        TABLE,
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("step_id", sa.Integer, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "step_id", name="pk_durable_transaction_outputs"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
