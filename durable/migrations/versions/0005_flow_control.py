"""Flow control and schedules: queue limits, schedules, and a workflow's
partition key and delayed start; an index for retention.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ACTIVE = "status IN ('ENQUEUED', 'PENDING')"
HELD = "status = 'ENQUEUED' AND redispatch_at_ms IS NULL AND lease_owner IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("durable_workflows") as batch:
        batch.add_column(sa.Column("partition_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("start_at_ms", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_durable_workflows_queue_active", "durable_workflows", ["queue", "status", "partition_key"],
        postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE),
    )
    op.create_index("ix_durable_workflows_queue_started", "durable_workflows", ["queue", "started_at_ms"])
    op.create_index(
        "ix_durable_workflows_queue_held", "durable_workflows", ["queue", "priority", "created_at_ms"],
        postgresql_where=sa.text(HELD), sqlite_where=sa.text(HELD),
    )
    op.create_index(
        "ix_durable_workflows_ended_roots", "durable_workflows", ["completed_at_ms"],
        postgresql_where=sa.text("parent_workflow_id IS NULL"),
        sqlite_where=sa.text("parent_workflow_id IS NULL"),
    )
    op.create_table(
        "durable_queues",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("partition_concurrency", sa.Integer(), nullable=True),
        sa.Column("rate_limit", sa.String(40), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "durable_schedules",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("workflow_name", sa.String(255), nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("every_ms", sa.BigInteger(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("missed", sa.String(20), nullable=False, server_default="run_latest"),
        sa.Column("queue", sa.String(255), nullable=True),
        sa.Column("next_tick_ms", sa.BigInteger(), nullable=False),
        sa.Column("paused", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("durable_schedules")
    op.drop_table("durable_queues")
    op.drop_index("ix_durable_workflows_ended_roots", "durable_workflows")
    op.drop_index("ix_durable_workflows_queue_held", "durable_workflows")
    op.drop_index("ix_durable_workflows_queue_started", "durable_workflows")
    op.drop_index("ix_durable_workflows_queue_active", "durable_workflows")
    with op.batch_alter_table("durable_workflows") as batch:
        batch.drop_column("start_at_ms")
        batch.drop_column("partition_key")
