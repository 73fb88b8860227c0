"""The one description of durable's tables. The Alembic migrations in
`durable/migrations/` create exactly this (a test compares the two).

Times are integer milliseconds since the epoch (`*_at_ms`); payloads are JSON
text with their format recorded in `serialization`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.schema import DDL

metadata = MetaData()

ACTIVE_SQL = "status IN ('ENQUEUED', 'PENDING')"
HELD_SQL = "status = 'ENQUEUED' AND redispatch_at_ms IS NULL AND lease_owner IS NULL"

workflows = Table(
    "durable_workflows",
    metadata,
    Column("workflow_id", String(255), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("status", String(40), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("dedup_key", String(255), nullable=True),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("inputs", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("serialization", String(20), nullable=False, server_default="json-v1"),
    Column("recovery_attempts", Integer, nullable=False, server_default="0"),
    # NULL: the workflow's own default, fixed by the first claim
    Column("max_recovery_attempts", Integer, nullable=True),
    # The lease: who runs the workflow now, which execution (epoch), until when.
    Column("lease_owner", String(255), nullable=True),
    Column("lease_epoch", Integer, nullable=False, server_default="0"),
    Column("lease_expires_at_ms", BigInteger, nullable=True),
    # When the recovery sweeper should (re)publish an unleased workflow:
    # a timer, a wake-up, or a guard against a lost message. NULL: wait.
    Column("redispatch_at_ms", BigInteger, nullable=True),
    Column("deadline_at_ms", BigInteger, nullable=True),
    Column("app_version", String(255), nullable=True),
    Column("executor", String(255), nullable=True),
    Column("parent_workflow_id", String(255), nullable=True),
    Column("last_death", Text, nullable=True),
    # JSON: the rest of a static chain, started by this workflow's end (canvas.py)
    Column("continuation", Text, nullable=True),
    # JSON: the trace context the workflow was started in (W3C traceparent),
    # which each of its executions continues (tracing.py); NULL untraced
    Column("trace_context", Text, nullable=True),
    # Flow control (flow.py): a queue's partition_concurrency counts per
    # partition key; a workflow is not started before start_at_ms.
    Column("partition_key", String(255), nullable=True),
    Column("start_at_ms", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger, nullable=True),
    Column("completed_at_ms", BigInteger, nullable=True),
    Index(
        "uq_durable_workflows_active_dedup",
        "queue",
        "dedup_key",
        unique=True,
        postgresql_where=text(f"dedup_key IS NOT NULL AND {ACTIVE_SQL}"),
        sqlite_where=text(f"dedup_key IS NOT NULL AND {ACTIVE_SQL}"),
    ),
    Index(
        "ix_durable_workflows_active",
        "status",
        "redispatch_at_ms",
        postgresql_where=text(ACTIVE_SQL),
        sqlite_where=text(ACTIVE_SQL),
    ),
    Index("ix_durable_workflows_created", "created_at_ms"),
    # a limited queue's gate counts its running workflows, and wakes the next
    Index(
        "ix_durable_workflows_queue_active",
        "queue",
        "status",
        "partition_key",
        postgresql_where=text(ACTIVE_SQL),
        sqlite_where=text(ACTIVE_SQL),
    ),
    # Three indexes hold only the rows their queries read, so a new workflow
    # (no parent, not started, not ended) enters none of them (migration 0011).
    Index(
        "ix_durable_workflows_queue_started",
        "queue",
        "started_at_ms",
        postgresql_where=text("started_at_ms IS NOT NULL"),
        sqlite_where=text("started_at_ms IS NOT NULL"),
    ),
    # a limited queue's held-back workflows, in the order a freed slot takes them
    Index(
        "ix_durable_workflows_queue_held",
        "queue",
        "priority",
        "created_at_ms",
        postgresql_where=text(HELD_SQL),
        sqlite_where=text(HELD_SQL),
    ),
    # retention: the oldest ended root workflows first
    Index(
        "ix_durable_workflows_ended_roots",
        "completed_at_ms",
        postgresql_where=text("parent_workflow_id IS NULL AND completed_at_ms IS NOT NULL"),
        sqlite_where=text("parent_workflow_id IS NULL AND completed_at_ms IS NOT NULL"),
    ),
    Index(
        "ix_durable_workflows_parent",
        "parent_workflow_id",
        postgresql_where=text("parent_workflow_id IS NOT NULL"),
        sqlite_where=text("parent_workflow_id IS NOT NULL"),
    ),
    Index("ix_durable_workflows_name_status", "name", "status"),
)

# No foreign key to the workflow: every step write is fenced on the workflow
# row already (see store.execution), and the key's check would lock that row
# on every checkpoint (migration 0003).
steps = Table(
    "durable_steps",
    metadata,
    Column("workflow_id", String(255), nullable=False),
    Column("step_id", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("status", String(20), nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempt_errors", Text, nullable=True),
    Column("serialization", String(20), nullable=False, server_default="json-v1"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("crashes", Integer, nullable=False, server_default="0"),
    Column("last_crash", Text, nullable=True),
    Column("child_workflow_id", String(255), nullable=True),
    Column("next_attempt_at_ms", BigInteger, nullable=True),
    Column("started_at_ms", BigInteger, nullable=True),
    Column("completed_at_ms", BigInteger, nullable=True),
    # the lease owner ("host:pid") whose checkpoint wrote the row: the
    # process that ran the step's last attempt
    Column("executor", String(255), nullable=True),
    PrimaryKeyConstraint("workflow_id", "step_id", name="pk_durable_steps"),
)

# A queue's limits (`dur.queue(...)`), upserted from code at worker start:
# every worker enforces the same ones. The row is also the lock that
# serializes the starts of the queue's workflows.
queues = Table(
    "durable_queues",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("concurrency", Integer, nullable=True),
    Column("partition_concurrency", Integer, nullable=True),
    Column("rate_limit", String(40), nullable=True),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Schedules (`@dur.scheduled`): each tick is a workflow whose ID is the
# schedule's name and the tick's instant; next_tick_ms advances by a
# compare-and-set, so one sweeper, whichever, starts each tick.
schedules = Table(
    "durable_schedules",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("workflow_name", String(255), nullable=False),
    Column("cron", String(255), nullable=True),
    Column("every_ms", BigInteger, nullable=True),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("missed", String(20), nullable=False, server_default="run_latest"),
    Column("queue", String(255), nullable=True),
    Column("next_tick_ms", BigInteger, nullable=False),
    Column("paused", Integer, nullable=False, server_default="0"),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Circuit breakers (`dur.circuit_breaker`), shared by every worker: state
# closed / open (until open_until_ms) / half_open (probe_owner's attempt is
# the one let through); failures: JSON list of recent failure times.
breakers = Table(
    "durable_breakers",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("open_until_ms", BigInteger, nullable=True),
    Column("probe_owner", String(600), nullable=True),
    Column("failures", Text, nullable=False, server_default="[]"),
    Column("failure_threshold", Integer, nullable=False),
    Column("window_ms", BigInteger, nullable=False),
    Column("reset_timeout_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Durable messages (`durable.send` / `durable.recv`). `seq` orders them: recv
# takes the oldest unconsumed one for its (workflow, topic). `message_id` is
# unique: a send from a workflow derives it from (sender, step), so a replayed
# or concurrent send cannot insert twice. A consumed message keeps its row
# (consumed_at_ms, consumed_by_step_id) until its workflow is deleted.
messages = Table(
    "durable_messages",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(600), nullable=False),
    Column(
        "workflow_id",
        String(255),
        ForeignKey("durable_workflows.workflow_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("topic", String(255), nullable=True),
    Column("payload", Text, nullable=False),
    Column("serialization", String(20), nullable=False, server_default="json-v1"),
    Column("sender_workflow_id", String(255), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("consumed_at_ms", BigInteger, nullable=True),
    Column("consumed_by_step_id", Integer, nullable=True),
    UniqueConstraint("message_id", name="uq_durable_messages_message_id"),
    Index("ix_durable_messages_workflow", "workflow_id", "seq"),
    # what recv looks for: stays small however many messages were consumed
    Index(
        "ix_durable_messages_unconsumed",
        "workflow_id",
        "topic",
        "seq",
        postgresql_where=text("consumed_at_ms IS NULL"),
        sqlite_where=text("consumed_at_ms IS NULL"),
    ),
)

# The latest value of each event a workflow published (`durable.set_event`).
events = Table(
    "durable_events",
    metadata,
    Column(
        "workflow_id",
        String(255),
        ForeignKey("durable_workflows.workflow_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("key", String(255), nullable=False),
    Column("value", Text, nullable=False),
    Column("serialization", String(20), nullable=False, server_default="json-v1"),
    Column("step_id", Integer, nullable=False),  # the set_event step that wrote it
    Column("updated_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("workflow_id", "key", name="pk_durable_events"),
)

# Workflows suspended in `durable.get_event` on (target workflow, key): the
# set_event that publishes the key wakes them. The target need not exist yet.
event_waiters = Table(
    "durable_event_waiters",
    metadata,
    Column("target_workflow_id", String(255), nullable=False),
    Column("key", String(255), nullable=False),
    Column(
        "waiter_workflow_id",
        String(255),
        ForeignKey("durable_workflows.workflow_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint(
        "target_workflow_id", "key", "waiter_workflow_id", name="pk_durable_event_waiters"
    ),
    Index("ix_durable_event_waiters_waiter", "waiter_workflow_id"),
)


# Each registered workflow's parameters as JSON Schema (durable/inputs.py),
# upserted by every worker at its start: `DurableClient.enqueue` checks a
# workflow's arguments by name, without its code, and knows its names.
workflow_schemas = Table(
    "durable_workflow_schemas",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("parameters", Text, nullable=False),  # JSON: {"parameters": [{name, kind, required, schema}]}
    Column("app_version", String(255), nullable=True),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Postgres: a workflow's end (any path: finish, cancel, quarantine, timeout)
# notifies ENDED_CHANNEL with its ID, in the ending transaction itself, so
# a client waiting for the result LISTENs instead of polling (client.py).
# A trigger, not a call in each ending statement: no path can forget it.
ENDED_CHANNEL = "durable_workflow_ended"
NOTIFY_ENDED_SQL = (
    """
CREATE OR REPLACE FUNCTION durable_notify_workflow_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('durable_workflow_ended', NEW.workflow_id);
    RETURN NULL;
END
$$""",
    """
CREATE TRIGGER durable_workflow_ended
AFTER UPDATE OF status ON durable_workflows
FOR EACH ROW
WHEN (OLD.status IN ('ENQUEUED', 'PENDING') AND NEW.status NOT IN ('ENQUEUED', 'PENDING'))
EXECUTE PROCEDURE durable_notify_workflow_ended()""",
)
for _statement in NOTIFY_ENDED_SQL:
    event.listen(
        workflows, "after_create",
        DDL(_statement).execute_if(dialect="postgresql"),  # type: ignore[no-untyped-call]
    )


# Postgres: the gate a workflow of a limited queue passes to start
# (store/flow.py), as one function so that the whole gate and the claim are
# one statement, one round trip. It locks the queue's row first; each of its
# queries then takes a snapshot of its own (a volatile function's, under READ
# COMMITTED), so the counts see every start the lock made it wait for.
# Returns -1: start it; -2: held until a slot frees; t >= 0: held by the rate
# limit until t; -3: not gated here (no limits, already started, other
# queue); -4: no such workflow; -5: its own start time is still ahead.
GATE_FUNCTION_SQL = r"""
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
event.listen(
    queues, "after_create",
    DDL(GATE_FUNCTION_SQL).execute_if(dialect="postgresql"),  # type: ignore[no-untyped-call]
)

# --- in an application database of its own (`app_database_url`) ---------------
# Migrated by `durable/migrations/app_database/`, with its own version table.

app_metadata = MetaData()

# The outcome of a @transaction step, written inside the application's own
# transaction; the step row in the system database is written after it.
transaction_outputs = Table(
    "durable_transaction_outputs",
    app_metadata,
    Column("workflow_id", String(255), nullable=False),
    Column("step_id", Integer, nullable=False),
    Column("output", Text, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("workflow_id", "step_id", name="pk_durable_transaction_outputs"),
)
