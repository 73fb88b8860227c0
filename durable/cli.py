"""The `durable` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from .client import DurableClient
from .database import APP_TABLES, Database
from .errors import DurableError
from .records import Status


def _client() -> DurableClient:
    return DurableClient()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade durable's tables: once per deployment where
    auto-migration is off (Postgres by default). Run it with DDL rights and
    a direct connection (not through pgbouncer's transaction pooling)."""
    client = _client()
    settings = client.settings
    revision = client.store.db.migrate()
    print(f"durable schema at revision {revision} ({settings.resolved_database_url.split('@')[-1]})")
    if settings.app_database_url and settings.app_database_url != settings.resolved_database_url:
        app_db = Database(
            settings.app_database_url, history=APP_TABLES,
            migration_lock_timeout_seconds=settings.migration_lock_timeout_seconds,
        )
        try:
            revision = app_db.migrate()
        finally:
            app_db.dispose()
        print(f"durable's application tables at revision {revision} ({settings.app_database_url.split('@')[-1]})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(steps=args.steps, kill_after_step=args.kill_after)


def cmd_worker(args: argparse.Namespace) -> int:
    """Start a Celery worker for the project's app with durable's settings."""
    celery_args = list(args.celery_args)
    if celery_args[:1] == ["--"]:  # argparse keeps the separator; celery would misread it
        celery_args = celery_args[1:]
    argv = [sys.executable, "-m", "celery", "-A", args.app, "worker", *celery_args]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_list(args: argparse.Namespace) -> int:
    rows = _client().list_workflows(
        status=args.status, name=args.name, queue=args.queue, limit=args.limit, offset=args.offset
    )
    print(f"{'workflow_id':<40} {'name':<24} {'status':<32} {'rec':>3}  created")
    for w in rows:
        print(f"{w.workflow_id:<40} {w.name:<24} {w.status.value:<32} {w.recovery_attempts:>3}  {w.created_at:%Y-%m-%d %H:%M:%S}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = _client()
    w = client.get(args.workflow_id)
    print(f"workflow {w.workflow_id}  {w.name}  {w.status.value}")
    print(f"  queue {w.queue}  dedup_key {w.dedup_key}  recovery {w.recovery_attempts}/{w.max_recovery_attempts}")
    print(f"  inputs {json.dumps(w.inputs, default=str)}")
    if w.status is Status.SUCCESS:
        print(f"  output {json.dumps(w.output, default=str)}")
    if w.error:
        print(f"  error {w.error.type}: {w.error.message}")
    if w.last_death:
        print(f"  last worker death: {w.last_death}")
    for s in client.list_steps(args.workflow_id):
        extra = f" crashes={s.crashes}" if s.crashes else ""
        child = f" child={s.child_workflow_id}" if s.child_workflow_id else ""
        print(f"  #{s.step_id:<4} {s.name:<28} {s.status.value:<9} attempts={s.attempts}{extra}{child}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    cancelled = _client().cancel(args.workflow_id)
    print(f"cancelled: {', '.join(cancelled) or 'nothing (already ended)'}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    handle = _client().resume(args.workflow_id)
    print(f"resumed {handle.workflow_id}")
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    handle = _client().fork(args.workflow_id, from_step=args.from_step, new_workflow_id=args.new_id)
    print(f"forked {args.workflow_id} from step {args.from_step} as {handle.workflow_id}")
    return 0


def _flow_admin() -> Any:
    from .flow_admin import FlowAdmin  # the sweeper's tick rows: not loaded for other commands

    client = _client()
    return FlowAdmin(client.store, client.dispatcher, client.settings, client.clock)


def cmd_queues(args: argparse.Namespace) -> int:
    _print_json(_flow_admin().list_queues())
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    admin = _flow_admin()
    if args.action == "list":
        _print_json(admin.list_schedules())
    elif args.action == "pause":
        admin.pause_schedule(args.name)
    elif args.action == "resume":
        admin.resume_schedule(args.name)
    else:
        print(admin.trigger_schedule(args.name))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import serve

    serve(_client(), host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="create or upgrade durable's tables").set_defaults(func=cmd_migrate)

    demo = sub.add_parser("demo", help="kill a worker mid-workflow and watch it recover")
    demo.add_argument("--steps", type=int, default=6)
    demo.add_argument("--kill-after", type=int, default=3, help="kill during the step after this one")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="start a Celery worker (arguments after -- go to celery)")
    worker.add_argument("-A", "--app", default=os.environ.get("DURABLE_CELERY_APP", "workers.app"))
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=cmd_worker)

    wf = sub.add_parser("workflows", help="inspect and steer workflows")
    wf_sub = wf.add_subparsers(dest="action", required=True)
    lst = wf_sub.add_parser("list")
    lst.add_argument("--status", choices=[s.value for s in Status])
    lst.add_argument("--name")
    lst.add_argument("--queue")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--offset", type=int, default=0)
    lst.set_defaults(func=cmd_list)
    for action, func in (("show", cmd_show), ("cancel", cmd_cancel), ("resume", cmd_resume)):
        p = wf_sub.add_parser(action)
        p.add_argument("workflow_id")
        p.set_defaults(func=func)
    fork = wf_sub.add_parser("fork")
    fork.add_argument("workflow_id")
    fork.add_argument("--from-step", type=int, required=True)
    fork.add_argument("--new-id", help="the fork's workflow ID (must not exist yet; default: a new UUID)")
    fork.set_defaults(func=cmd_fork)

    queues = sub.add_parser("queues", help="queues: limits, running, backlog")
    queues.add_subparsers(dest="action", required=True).add_parser("list").set_defaults(func=cmd_queues)

    sched = sub.add_parser("schedules", help="list and steer schedules")
    sched_sub = sched.add_subparsers(dest="action", required=True)
    sched_sub.add_parser("list").set_defaults(func=cmd_schedules)
    for action in ("pause", "resume", "trigger"):
        p = sched_sub.add_parser(action)
        p.add_argument("name")
        p.set_defaults(func=cmd_schedules)

    dash = sub.add_parser("dashboard", help="serve the dashboard")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8300)
    dash.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DurableError, ValueError) as exc:  # bad input or state: a message, not a traceback
        print(f"durable: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
