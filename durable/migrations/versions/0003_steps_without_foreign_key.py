"""Step rows no longer carry a foreign key to their workflow.

Every step write is fenced on the workflow row already (an EXISTS on its
lease epoch), and workflows are deleted with their steps by
`Store.delete_workflows`. The foreign key's check took a row lock on the
workflow for every checkpoint: about 40 us of server time and 12% of a
checkpoint's round trip.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        # SQLite cannot drop a constraint: the table is copied without it
        with op.batch_alter_table("durable_steps", recreate="always", copy_from=_steps_without_fk()):
            pass
        return
    for fk in sa.inspect(conn).get_foreign_keys("durable_steps"):
        # Postgres names every constraint: the name is never None here
        if fk["referred_table"] == "durable_workflows" and fk["name"] is not None:
            op.drop_constraint(fk["name"], "durable_steps", type_="foreignkey")


def _steps_without_fk() -> sa.Table:
    return sa.Table(
        "durable_steps",
        sa.MetaData(),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("step_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempt_errors", sa.Text, nullable=True),
        sa.Column("serialization", sa.String(20), nullable=False, server_default="json-v1"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("crashes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_crash", sa.Text, nullable=True),
        sa.Column("child_workflow_id", sa.String(255), nullable=True),
        sa.Column("next_attempt_at_ms", sa.BigInteger, nullable=True),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("completed_at_ms", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("workflow_id", "step_id", name="pk_durable_steps"),
    )


def downgrade() -> None:
    op.create_foreign_key(
        None, "durable_steps", "durable_workflows", ["workflow_id"], ["workflow_id"], ondelete="CASCADE"
    )
