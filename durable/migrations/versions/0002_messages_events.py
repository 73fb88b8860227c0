"""Durable messages, events and event waiters.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "durable_messages",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True, autoincrement=True,
        ),
        sa.Column("message_id", sa.String(600), nullable=False),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(255), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("serialization", sa.String(20), nullable=False, server_default="json-v1"),
        sa.Column("sender_workflow_id", sa.String(255), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("consumed_at_ms", sa.BigInteger, nullable=True),
        sa.Column("consumed_by_step_id", sa.Integer, nullable=True),
        sa.UniqueConstraint("message_id", name="uq_durable_messages_message_id"),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["durable_workflows.workflow_id"], ondelete="CASCADE"
        ),
    )
    op.create_index("ix_durable_messages_workflow", "durable_messages", ["workflow_id", "seq"])
    op.create_index(
        "ix_durable_messages_unconsumed",
        "durable_messages",
        ["workflow_id", "topic", "seq"],
        postgresql_where=sa.text("consumed_at_ms IS NULL"),
        sqlite_where=sa.text("consumed_at_ms IS NULL"),
    )

    op.create_table(
        "durable_events",
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("serialization", sa.String(20), nullable=False, server_default="json-v1"),
        sa.Column("step_id", sa.Integer, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "key", name="pk_durable_events"),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["durable_workflows.workflow_id"], ondelete="CASCADE"
        ),
    )

    op.create_table(
        "durable_event_waiters",
        sa.Column("target_workflow_id", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("waiter_workflow_id", sa.String(255), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "target_workflow_id", "key", "waiter_workflow_id", name="pk_durable_event_waiters"
        ),
        sa.ForeignKeyConstraint(
            ["waiter_workflow_id"], ["durable_workflows.workflow_id"], ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_durable_event_waiters_waiter", "durable_event_waiters", ["waiter_workflow_id"]
    )


def downgrade() -> None:
    op.drop_table("durable_event_waiters")
    op.drop_table("durable_events")
    op.drop_table("durable_messages")
