"""A workflow may carry a continuation: the rest of a static chain that its
end starts (see durable/canvas.py).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("durable_workflows") as batch:
        batch.add_column(sa.Column("continuation", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("durable_workflows") as batch:
        batch.drop_column("continuation")
