"""Circuit breakers shared by every worker (durable/breakers.py).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "durable_breakers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("open_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("probe_owner", sa.String(600), nullable=True),
        sa.Column("failures", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("failure_threshold", sa.Integer(), nullable=False),
        sa.Column("window_ms", sa.BigInteger(), nullable=False),
        sa.Column("reset_timeout_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("durable_breakers")
