"""Three indexes of durable_workflows hold only the rows their queries read:
a new workflow (no parent, not started, not ended) enters none of them, so a
start's INSERT updates three indexes fewer.

- parent: only children (every look-up is by a parent's ID);
- queue_started: only started workflows (the rate window reads those);
- ended_roots: only ended roots (retention reads those).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CHILDREN = "parent_workflow_id IS NOT NULL"
STARTED = "started_at_ms IS NOT NULL"
ENDED_ROOTS = "parent_workflow_id IS NULL AND completed_at_ms IS NOT NULL"


def _recreate(name: str, columns: list[str], where: str | None) -> None:
    op.drop_index(name, "durable_workflows")
    if where is None:
        op.create_index(name, "durable_workflows", columns)
    else:
        op.create_index(
            name, "durable_workflows", columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )


def upgrade() -> None:
    _recreate("ix_durable_workflows_parent", ["parent_workflow_id"], CHILDREN)
    _recreate("ix_durable_workflows_queue_started", ["queue", "started_at_ms"], STARTED)
    _recreate("ix_durable_workflows_ended_roots", ["completed_at_ms"], ENDED_ROOTS)


def downgrade() -> None:
    _recreate("ix_durable_workflows_parent", ["parent_workflow_id"], None)
    _recreate("ix_durable_workflows_queue_started", ["queue", "started_at_ms"], None)
    _recreate("ix_durable_workflows_ended_roots", ["completed_at_ms"], "parent_workflow_id IS NULL")
