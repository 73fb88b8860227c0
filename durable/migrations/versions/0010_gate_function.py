"""Postgres: the gate of a limited queue as one function, `durable_gate`, so
that a start passes the gate and is claimed in one statement (see
schema.GATE_FUNCTION_SQL). Nothing on SQLite.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION durable_gate(p_queue text, p_wid text, p_now bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    lim record;
    wf record;
    limited boolean;
    running bigint;
    ahead bigint;
    rate text[];
    period_ms bigint;
    nth bigint;
    wake bigint;
BEGIN
    -- like the claim: durable before any write of the execution it starts
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO lim FROM durable_queues WHERE name = p_queue FOR UPDATE;
    limited := FOUND;
    SELECT status, queue, partition_key, start_at_ms, priority INTO wf
        FROM durable_workflows WHERE workflow_id = p_wid;
    IF NOT FOUND THEN RETURN -4; END IF;
    IF NOT limited OR wf.status <> 'ENQUEUED' OR wf.queue <> p_queue THEN RETURN -3; END IF;
    IF wf.start_at_ms IS NOT NULL AND wf.start_at_ms > p_now THEN RETURN -5; END IF;
    IF lim.concurrency IS NOT NULL THEN
        SELECT count(*) INTO running FROM durable_workflows
            WHERE queue = p_queue AND status = 'PENDING';
        IF running >= lim.concurrency THEN
            wake := -2;
        ELSIF lim.priority <> 0 THEN
            -- a higher priority waiting for the same free slots goes first
            SELECT count(*) INTO ahead FROM durable_workflows
                WHERE queue = p_queue AND status = 'ENQUEUED' AND priority > wf.priority
                AND (start_at_ms IS NULL OR start_at_ms <= p_now);
            IF ahead >= lim.concurrency - running THEN wake := -2; END IF;
        END IF;
    END IF;
    IF wake IS NULL AND lim.partition_concurrency IS NOT NULL AND wf.partition_key IS NOT NULL THEN
        SELECT count(*) INTO running FROM durable_workflows
            WHERE queue = p_queue AND status = 'PENDING' AND partition_key = wf.partition_key;
        IF running >= lim.partition_concurrency THEN wake := -2; END IF;
    END IF;
    IF wake IS NULL AND lim.rate_limit IS NOT NULL THEN
        rate := regexp_match(lim.rate_limit, '^\s*(\d+)\s*(?:/\s*([smh]))?\s*$');
        period_ms := CASE coalesce(rate[2], 's') WHEN 's' THEN 1000 WHEN 'm' THEN 60000 ELSE 3600000 END;
        -- the count-th latest start in the window: when it leaves, a start may go
        SELECT started_at_ms INTO nth FROM durable_workflows
            WHERE queue = p_queue AND started_at_ms > p_now - period_ms
            ORDER BY started_at_ms DESC OFFSET rate[1]::int - 1 LIMIT 1;
        IF FOUND THEN wake := nth + period_ms; END IF;
    END IF;
    IF wake IS NULL THEN RETURN -1; END IF;
    UPDATE durable_workflows SET redispatch_at_ms = CASE WHEN wake = -2 THEN NULL ELSE wake END
        WHERE workflow_id = p_wid AND status = 'ENQUEUED';
    RETURN wake;
END
$$"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS durable_gate(text, text, bigint)")
