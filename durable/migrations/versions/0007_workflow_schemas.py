"""Each registered workflow's parameters as JSON Schema, recorded by workers
at their start, so a client checks arguments by name.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "durable_workflow_schemas",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("app_version", sa.String(255), nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("durable_workflow_schemas")
