"""The `durable` command line (click, as Celery's own).

Every command that reports something takes `--json` (one JSON document on
stdout). Exit codes: 0 done; 1 bad input or state (an unknown workflow, a
workflow in the wrong status, a database that cannot be reached): one line
on stderr, no traceback; 2 a command line the parser rejects (with usage).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import click

from .errors import DurableError
from .records import Status
from .settings import parse_duration

if TYPE_CHECKING:
    from .client import DurableClient
    from .workflow_admin import WorkflowFilter

# The client and the store (Celery, SQLAlchemy, the drivers) are imported by
# the commands that use them: `durable worker` loads them itself, once its
# start-up has paused the garbage collector (worker_command.py).

F = TypeVar("F", bound=Callable[..., Any])

STATUS = click.Choice([s.value for s in Status])


def _client() -> DurableClient:
    from .client import DurableClient

    return DurableClient()


def _emit_json(value: Any) -> None:
    from .workflow_admin import to_json

    click.echo(json.dumps(to_json(value), indent=2))


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print one JSON document")(function)


def _instant(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    """ISO 8601 (UTC unless an offset is given) or an age: 15m, 2h, 7d."""
    if value is None:
        return None
    from .workflow_admin import parse_instant

    try:
        return parse_instant(value, dt.datetime.now(dt.timezone.utc))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def filter_options(function: F) -> F:
    for option in reversed([
        click.option("--status", "statuses", type=STATUS, multiple=True, help="repeat for several"),
        click.option("--name", help="workflow name"),
        click.option("--queue", help="queue name"),
        click.option("--created-after", metavar="TIME", callback=_instant, help="ISO 8601 time or an age (2h, 7d)"),
        click.option("--created-before", metavar="TIME", callback=_instant, help="ISO 8601 time or an age (2h, 7d)"),
        click.option("--id-contains", help="text in the workflow ID"),
    ]):
        function = option(function)
    return function


def _filter(statuses: tuple[str, ...], name: str | None, queue: str | None, created_after: dt.datetime | None,
            created_before: dt.datetime | None, id_contains: str | None) -> WorkflowFilter:
    from .workflow_admin import WorkflowFilter

    return WorkflowFilter(tuple(Status(s) for s in statuses), name, queue, created_after, created_before, id_contains)


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    pass


@cli.command()
@json_option
def migrate(as_json: bool) -> None:
    """Create or upgrade durable's tables: once per deployment where
    auto-migration is off (Postgres by default). Run it with DDL rights and
    a direct connection (not through pgbouncer's transaction pooling)."""
    from .database import APP_TABLES, Database

    client = _client()
    settings = client.settings
    result: dict[str, Any] = {"revision": client.store.db.migrate(), "app_revision": None}
    where = settings.resolved_database_url.split("@")[-1]
    app_where = None
    if settings.app_database_url and settings.app_database_url != settings.resolved_database_url:
        app_db = Database(
            settings.app_database_url, history=APP_TABLES,
            migration_lock_timeout_seconds=settings.migration_lock_timeout_seconds,
        )
        try:
            result["app_revision"] = app_db.migrate()
        finally:
            app_db.dispose()
        app_where = settings.app_database_url.split("@")[-1]
    if as_json:
        _emit_json(result)
        return
    click.echo(f"durable schema at revision {result['revision']} ({where})")
    if app_where:
        click.echo(f"durable's application tables at revision {result['app_revision']} ({app_where})")


@cli.command()
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--kill-after", type=click.IntRange(min=0), default=3, show_default=True,
              help="kill the worker during the step after this one")
def demo(steps: int, kill_after: int) -> int:
    """Kill a worker mid-workflow and watch another one finish it."""
    from . import demo as demo_module

    return demo_module.run(steps=steps, kill_after_step=kill_after)


@cli.command(add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> int:
    """Start a Celery worker in this process: -A APP (default
    $DURABLE_CELERY_APP, or workers.app) and Celery's worker options (-Q, -c,
    -P, -n, -l, --without-mingle ...; `durable worker --help` lists them).
    It starts faster than `celery -A APP worker`, which loads all of
    Celery's commands and plugins first."""
    from .worker_command import run

    return run(celery_args)


@cli.group()
def workflows() -> None:
    """Find, inspect and steer workflows."""


@workflows.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
def list_workflows(limit: int, offset: int, as_json: bool, **where: Any) -> None:
    """Workflows newest first (summaries: no inputs or output)."""
    from .workflow_admin import search

    rows = search(_client(), _filter(**where), limit=limit, offset=offset)
    if as_json:
        _emit_json(rows)
        return
    click.echo(f"{'workflow_id':<40} {'name':<24} {'status':<32} {'rec':>3}  created")
    for w in rows:
        created = f"{w.created_at:%Y-%m-%d %H:%M:%S}" if w.created_at else ""
        click.echo(f"{w.workflow_id:<40} {w.name:<24} {w.status.value:<32} {w.recovery_attempts:>3}  {created}")


@workflows.command()
@click.argument("workflow_id")
@json_option
def show(workflow_id: str, as_json: bool) -> None:
    """One workflow: inputs, output, error and its steps."""
    client = _client()
    w = client.get(workflow_id)
    steps = client.list_steps(workflow_id)
    if as_json:
        _emit_json({"workflow": w, "steps": steps})
        return
    click.echo(f"workflow {w.workflow_id}  {w.name}  {w.status.value}")
    click.echo(f"  queue {w.queue}  dedup_key {w.dedup_key}  recovery {w.recovery_attempts}/{w.max_recovery_attempts}")
    click.echo(f"  inputs {json.dumps(w.inputs, default=str)}")
    if w.status is Status.SUCCESS:
        click.echo(f"  output {json.dumps(w.output, default=str)}")
    if w.error:
        click.echo(f"  error {w.error.type}: {w.error.message}")
    if w.last_death:
        click.echo(f"  last worker death: {w.last_death}")
    for s in steps:
        extra = f" crashes={s.crashes}" if s.crashes else ""
        child = f" child={s.child_workflow_id}" if s.child_workflow_id else ""
        worker = f" worker={s.executor}" if s.executor else ""
        click.echo(f"  #{s.step_id:<4} {s.name:<28} {s.status.value:<9} attempts={s.attempts}{worker}{extra}{child}")


@workflows.command()
@click.argument("workflow_id")
@json_option
def cancel(workflow_id: str, as_json: bool) -> None:
    """Cancel a workflow and its active children (and theirs)."""
    cancelled = _client().cancel(workflow_id)
    if as_json:
        _emit_json({"cancelled": cancelled})
    else:
        click.echo(f"cancelled: {', '.join(cancelled) or 'nothing (already ended)'}")


@workflows.command()
@click.argument("workflow_id")
@json_option
def resume(workflow_id: str, as_json: bool) -> None:
    """Run a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow again from its last checkpoint."""
    handle = _client().resume(workflow_id)
    if as_json:
        _emit_json({"resumed": handle.workflow_id})
    else:
        click.echo(f"resumed {handle.workflow_id}")


@workflows.command()
@click.argument("workflow_id")
@click.option("--from-step", type=int, required=True, help="re-run from this step; earlier checkpoints are reused")
@click.option("--new-id", help="the fork's workflow ID (must not exist yet; default: a new UUID)")
@json_option
def fork(workflow_id: str, from_step: int, new_id: str | None, as_json: bool) -> None:
    """Start a new workflow with the same inputs, reusing the checkpoints before a step."""
    handle = _client().fork(workflow_id, from_step=from_step, new_workflow_id=new_id)
    if as_json:
        _emit_json({"forked": workflow_id, "from_step": from_step, "workflow_id": handle.workflow_id})
    else:
        click.echo(f"forked {workflow_id} from step {from_step} as {handle.workflow_id}")


@workflows.command()
@filter_options
@click.option("--limit", type=click.IntRange(min=1, max=5000), default=500, show_default=True)
@json_option
def retry(limit: int, as_json: bool, **where: Any) -> None:
    """Retry failed workflows that match: MAX_RECOVERY_ATTEMPTS_EXCEEDED ones
    are resumed, ERROR ones forked as <id>:retry from their first step that
    did not succeed."""
    from .workflow_admin import retry_failed

    report = retry_failed(_client(), _filter(**where), limit=limit)
    if as_json:
        _emit_json(report)
        return
    for source, new_id in report.forked.items():
        click.echo(f"forked {source} as {new_id}")
    for workflow_id in report.resumed:
        click.echo(f"resumed {workflow_id}")
    for workflow_id, reason in report.skipped.items():
        click.echo(f"skipped {workflow_id}: {reason}")
    click.echo(report.summary())


def _flow_admin() -> Any:
    from .flow_admin import FlowAdmin  # the sweeper's tick rows: not loaded for other commands

    client = _client()
    return FlowAdmin(client.store, client.dispatcher, client.settings, client.clock)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    from .workflow_admin import to_json

    cells = [[("" if r.get(c) is None else str(to_json(r.get(c)))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@cli.group()
def queues() -> None:
    """Queues: limits, running, backlog."""


@queues.command("list")
@json_option
def list_queues(as_json: bool) -> None:
    """Each queue's limits, running count and backlog."""
    rows = _flow_admin().list_queues()
    if as_json:
        _emit_json(rows)
    else:
        _table(rows, list(rows[0]) if rows else ["name"])


@cli.group()
def schedules() -> None:
    """List and steer schedules."""


@schedules.command("list")
@json_option
def list_schedules(as_json: bool) -> None:
    rows = _flow_admin().list_schedules()
    if as_json:
        _emit_json(rows)
    else:
        _table(rows, ["name", "workflow", "cron", "every_seconds", "timezone", "missed", "paused", "next_tick"])


@schedules.command("pause")
@click.argument("name")
@json_option
def pause_schedule(name: str, as_json: bool) -> None:
    _flow_admin().pause_schedule(name)
    if as_json:
        _emit_json({"paused": name})
    else:
        click.echo(f"paused {name}")


@schedules.command("resume")
@click.argument("name")
@json_option
def resume_schedule(name: str, as_json: bool) -> None:
    _flow_admin().resume_schedule(name)
    if as_json:
        _emit_json({"resumed": name})
    else:
        click.echo(f"resumed {name}")


@schedules.command("trigger")
@click.argument("name")
@json_option
def trigger_schedule(name: str, as_json: bool) -> None:
    """Start a tick now; prints its workflow ID."""
    workflow_id = _flow_admin().trigger_schedule(name)
    if as_json:
        _emit_json({"workflow_id": workflow_id})
    else:
        click.echo(workflow_id)


@cli.group()
def breakers() -> None:
    """Circuit breakers: list, open, close."""


@breakers.command("list")
@json_option
def list_breakers(as_json: bool) -> None:
    rows = _flow_admin().list_breakers()
    if as_json:
        _emit_json(rows)
    else:
        _table(rows, ["name", "state", "open_until", "failure_threshold", "window_seconds", "reset_timeout_seconds"])


@breakers.command("open")
@click.argument("name")
@click.option("--seconds", type=float, help="how long (default: the breaker's reset timeout)")
@json_option
def open_breaker(name: str, seconds: float | None, as_json: bool) -> None:
    _flow_admin().steer_breaker(name, "open", seconds)
    if as_json:
        _emit_json({"opened": name})
    else:
        click.echo(f"opened {name}")


@breakers.command("close")
@click.argument("name")
@json_option
def close_breaker(name: str, as_json: bool) -> None:
    _flow_admin().steer_breaker(name, "closed")
    if as_json:
        _emit_json({"closed": name})
    else:
        click.echo(f"closed {name}")


@cli.command()
@click.option("--older-than", required=True, metavar="DURATION", help="e.g. 7d, 12h: ended at least this long ago")
@click.option("--status", "statuses", type=click.Choice([s.value for s in Status if s.is_terminal]), multiple=True,
              help="only these ended statuses (repeat for several)")
@json_option
def gc(older_than: str, statuses: tuple[str, ...], as_json: bool) -> None:
    """Delete ended workflows (with their steps, messages, events and
    transaction outputs) in small batches; running ones are never touched."""
    deleted = _flow_admin().gc(parse_duration(older_than, "--older-than"), list(statuses) or None)
    if as_json:
        _emit_json({"deleted": deleted})
    else:
        click.echo(f"deleted {deleted} workflow(s)")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=9808, show_default=True)
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics on /metrics: the workers' counts on this
    host (PROMETHEUS_MULTIPROC_DIR) and the queue gauges from the database."""
    from .metrics import serve  # prometheus_client: loaded for this command alone

    client = _client()
    serve(port, host, client.store, client.clock)
    click.echo(f"serving metrics on http://{host}:{port}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="another address than loopback needs DURABLE_DASHBOARD_USERS or DURABLE_DASHBOARD_TOKEN")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8300, show_default=True)
@click.option("--prefix", default="", help="serve under this path, e.g. /durable")
def dashboard(host: str, port: int, prefix: str) -> None:
    """Serve the dashboard (see docs/operations.md for its authentication)."""
    try:
        from .dashboard import serve  # starlette and uvicorn: loaded for this command alone
    except ImportError as exc:
        raise ValueError(f"the dashboard needs the dashboard extra (pip install 'durable[dashboard]'): {exc}") from None

    serve(_client(), host=host, port=port, prefix=prefix)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="durable",
                          standalone_mode=False)
    except click.ClickException as exc:  # usage errors: exit 2, with the usage line
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("durable: aborted", err=True)
        return 1
    except (DurableError, ValueError) as exc:  # bad input or state: a message, not a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        click.echo(f"durable: {message}", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
