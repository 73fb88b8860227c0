"""Workflows and step outcomes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE_SQL = "status IN ('ENQUEUED', 'PENDING')"


def upgrade() -> None:
    op.create_table(
        "durable_workflows",
        sa.Column("workflow_id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=True),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("serialization", sa.String(20), nullable=False, server_default="json-v1"),
        sa.Column("recovery_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_recovery_attempts", sa.Integer, nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_expires_at_ms", sa.BigInteger, nullable=True),
        sa.Column("redispatch_at_ms", sa.BigInteger, nullable=True),
        sa.Column("deadline_at_ms", sa.BigInteger, nullable=True),
        sa.Column("app_version", sa.String(255), nullable=True),
        sa.Column("executor", sa.String(255), nullable=True),
        sa.Column("parent_workflow_id", sa.String(255), nullable=True),
        sa.Column("last_death", sa.Text, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("completed_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_index(
        "uq_durable_workflows_active_dedup",
        "durable_workflows",
        ["queue", "dedup_key"],
        unique=True,
        postgresql_where=sa.text(f"dedup_key IS NOT NULL AND {ACTIVE_SQL}"),
        sqlite_where=sa.text(f"dedup_key IS NOT NULL AND {ACTIVE_SQL}"),
    )
    op.create_index(
        "ix_durable_workflows_active",
        "durable_workflows",
        ["status", "redispatch_at_ms"],
        postgresql_where=sa.text(ACTIVE_SQL),
        sqlite_where=sa.text(ACTIVE_SQL),
    )
    op.create_index("ix_durable_workflows_created", "durable_workflows", ["created_at_ms"])
    op.create_index("ix_durable_workflows_parent", "durable_workflows", ["parent_workflow_id"])
    op.create_index("ix_durable_workflows_name_status", "durable_workflows", ["name", "status"])

    op.create_table(
        "durable_steps",
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
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["durable_workflows.workflow_id"], ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("durable_steps")
    op.drop_table("durable_workflows")
