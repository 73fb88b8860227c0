"""The operator surface: the `durable` command line run as a real subprocess,
and the dashboard served over HTTP. Rows are created with
`DurableClient.enqueue`, which writes the workflow row; no worker is needed.

Each test runs on SQLite and on Postgres; the Postgres fixture fails (never
skips) when it cannot start a server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from durable import DurableClient, Settings, Status
from durable.dashboard import NO_AUTH, create_app, workflow_href
from durable.dashboard.auth import LOOPBACK_HOSTS
from durable.database import Database
from durable.schema import steps
from tests.dashboard_harness import serving
from tests.harness import REPO, Backend, Worker
from tests.workflows import effects

DURABLE_BIN = Path(sys.executable).parent / "durable"


def run_durable(*args: str, database_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The `durable` command, configured by these settings alone (no other DURABLE_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env.update(DURABLE_DATABASE_URL=database_url, DURABLE_HOME=str(home))
    return subprocess.run(
        [str(DURABLE_BIN), *args], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=120
    )


@dataclass
class Env:
    database_url: str
    home: Path
    client: DurableClient

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_durable(*args, database_url=self.database_url, home=self.home)


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, tmp_path: Path) -> Iterator[Env]:
    assert DURABLE_BIN.exists(), f"{DURABLE_BIN} missing: pip install -e . into this venv"
    home = tmp_path / "home"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    else:
        url = request.getfixturevalue("create_pg_database")("cli")
    # The embedded filesystem broker under `home` takes the published
    # messages; nothing consumes them here.
    client = DurableClient(settings=Settings(home=str(home), database_url=url))
    yield Env(url, home, client)
    client.store.db.dispose()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def fails_cleanly(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


# --- command line ------------------------------------------------------------


def test_migrate_then_list_show_cancel_resume_fork(env: Env) -> None:
    head = Database.head_revision()
    assert f"revision {head}" in ok(env.run("migrate"))
    assert f"revision {head}" in ok(env.run("migrate"))  # idempotent

    a = env.client.enqueue("process_order", args=["o-1", 10.5], dedup_key="o-1", workflow_id="wf-a").workflow_id
    b = env.client.enqueue("send_mail", kwargs={"to": "x@example.com"}, workflow_id="wf-b").workflow_id

    listing = ok(env.run("workflows", "list"))
    assert a in listing and b in listing and "process_order" in listing and "ENQUEUED" in listing
    only_mail = ok(env.run("workflows", "list", "--name", "send_mail"))
    assert b in only_mail and a not in only_mail
    assert a not in ok(env.run("workflows", "list", "--status", "SUCCESS"))
    assert len(ok(env.run("workflows", "list", "--limit", "1")).splitlines()) == 2  # header + one row

    shown = ok(env.run("workflows", "show", a))
    assert f"workflow {a}  process_order  ENQUEUED" in shown
    assert '"o-1"' in shown and "10.5" in shown and "dedup_key o-1" in shown

    assert f"cancelled: {a}" in ok(env.run("workflows", "cancel", a))
    assert env.client.get(a).status is Status.CANCELLED
    assert a in ok(env.run("workflows", "list", "--status", "CANCELLED"))
    assert "nothing (already ended)" in ok(env.run("workflows", "cancel", a))

    assert f"resumed {a}" in ok(env.run("workflows", "resume", a))
    assert env.client.get(a).status is Status.ENQUEUED

    forked = ok(env.run("workflows", "fork", a, "--from-step", "0"))
    assert forked.startswith(f"forked {a} from step 0 as ")
    new_id = forked.split(" as ")[1].strip()
    copy = env.client.get(new_id)
    assert copy.name == "process_order" and copy.status is Status.ENQUEUED
    assert copy.inputs == env.client.get(a).inputs


def test_bad_input_is_a_clear_error_not_a_traceback(env: Env) -> None:
    ok(env.run("migrate"))
    for action in ("show", "cancel", "resume"):
        err = fails_cleanly(env.run("workflows", action, "no-such-workflow"))
        assert "no-such-workflow" in err and "not found" in err
    err = fails_cleanly(env.run("workflows", "fork", "no-such-workflow", "--from-step", "1"))
    assert "not found" in err

    wid = env.client.enqueue("process_order", workflow_id="wf-neg").workflow_id
    err = fails_cleanly(env.run("workflows", "fork", wid, "--from-step", "-1"))
    assert "from_step" in err

    # click rejects malformed command lines with exit code 2 and a usage line
    usage = fails_cleanly(env.run("workflows", "list", "--status", "DONE"), code=2)
    assert "Usage: durable workflows list" in usage and "Invalid value for '--status'" in usage
    assert "--from-step" in fails_cleanly(env.run("workflows", "fork", wid), code=2)


# --- dashboard ---------------------------------------------------------------


@pytest.fixture
def dashboard(env: Env) -> Iterator[str]:
    with serving(create_app(env.client, auth=NO_AUTH, allowed_hosts=LOOPBACK_HOSTS)) as url:
        yield url


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def add_step(client: DurableClient, workflow_id: str, step_id: int, name: str, **values: object) -> None:
    """A checkpoint row as a worker would have written it."""
    now_ms = int(time.time() * 1000)
    row = dict(workflow_id=workflow_id, step_id=step_id, name=name, status="SUCCESS", output="null",
               attempts=1, crashes=0, started_at_ms=now_ms - 1500, completed_at_ms=now_ms)
    row.update(values)
    with client.store.db.begin() as conn:
        conn.execute(steps.insert().values(**row))


def test_dashboard_lists_by_status_and_escapes_user_data(env: Env, dashboard: str) -> None:
    evil = env.client.enqueue("process_order", args=["<script>alert(1)</script>"], workflow_id="wf-evil")
    env.client.enqueue("<img src=x onerror=alert(2)>", workflow_id="wf-evil-name")
    done = env.client.enqueue("send_mail", workflow_id="wf-cancelled").workflow_id
    env.client.cancel(done)

    status, content_type, page = fetch(dashboard + "/")
    assert status == 200 and content_type.startswith("text/html")
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert 'href="/workflows/wf-evil"' in page and "wf-cancelled" in page

    status, _, page = fetch(dashboard + "/?status=CANCELLED")
    assert status == 200 and "wf-cancelled" in page and 'href="/workflows/wf-evil"' not in page
    _, _, page = fetch(dashboard + "/?name=send_mail")
    assert "wf-cancelled" in page and 'href="/workflows/wf-evil"' not in page

    status, _, page = fetch(dashboard + workflow_href(evil.workflow_id))
    assert status == 200
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    status, _, api = fetch(dashboard + "/api/workflows?status=ENQUEUED")
    body = json.loads(api)
    assert status == 200 and body["counts"]["ENQUEUED"] == 2 and body["counts"]["CANCELLED"] == 1
    assert {w["workflow_id"] for w in body["workflows"]} == {"wf-evil", "wf-evil-name"}

    status, _, api = fetch(dashboard + "/api/workflows/wf-evil")
    detail = json.loads(api)
    assert status == 200 and detail["workflow"]["inputs"]["args"] == ["<script>alert(1)</script>"]
    assert detail["workflow"]["status"] == "ENQUEUED" and detail["steps"] == []


def test_dashboard_workflow_detail_shows_steps_crashes_and_children(env: Env, dashboard: str) -> None:
    parent = env.client.enqueue("process_order", args=["o-9"], workflow_id="wf/parent 9").workflow_id
    child = env.client.enqueue("charge_card", workflow_id="wf-child")
    crash = json.dumps({"step": "charge", "attempt": 0, "cause": "Worker exited prematurely: signal 9 (SIGKILL)"})
    add_step(env.client, parent, 0, "reserve_stock", output='{"ok":true}')
    add_step(env.client, parent, 1, "charge", status="RETRYING", attempts=2, crashes=1, last_crash=crash,
             output=None, completed_at_ms=None)
    add_step(env.client, parent, 2, "charge_card", child_workflow_id=child.workflow_id)

    status, _, page = fetch(dashboard + workflow_href(parent))
    assert status == 200, page
    for text in ("reserve_stock", "RETRYING", "signal 9 (SIGKILL)", "1.500s", "charge_card", "o-9"):
        assert text in page
    assert 'href="/workflows/wf-child"' in page

    status, _, api = fetch(dashboard + "/api/workflows/" + workflow_href(parent).rsplit("/", 1)[1])
    body = json.loads(api)
    assert status == 200
    assert [s["name"] for s in body["steps"]] == ["reserve_stock", "charge", "charge_card"]
    assert body["steps"][1]["crashes"] == 1 and "SIGKILL" in body["steps"][1]["last_crash"]
    assert body["steps"][2]["child_workflow_id"] == "wf-child"


def test_each_step_names_the_worker_process_that_ran_it(pg_backend: Backend, effects_dir: Path, tmp_path: Path) -> None:
    """A real prefork worker runs ten steps; each step's side effect records
    the pid of the pool child that ran it (tests/workflows.py). The step rows
    name that host and pid: the CLI, the dashboard's timeline and its JSON."""
    worker = Worker(pg_backend.env(effects_dir), tmp_path / "worker.log", concurrency=2).start()
    client = pg_backend.client()
    try:
        handle = client.enqueue("ten_steps")
        assert handle.result(timeout=60)["sum"] == 385
        main, pool = worker.pid, worker.children()
    finally:
        worker.kill_all()
    ran = {kind: pid for kind, pid, _ in effects(handle.workflow_id)}
    assert set(ran.values()) <= set(pool) and main not in ran.values()  # pool children, not the main process
    host = socket.gethostname()
    expected = [f"{host}:{ran[f'step{i}']}" for i in range(1, 11)]
    assert [s.executor for s in client.list_steps(handle.workflow_id)] == expected

    shown = ok(run_durable("workflows", "show", handle.workflow_id,
                           database_url=pg_backend.database_url, home=tmp_path / "cli-home"))
    step_lines = [line for line in shown.splitlines() if line.lstrip().startswith("#")]
    assert [line.split("worker=")[1].split()[0] for line in step_lines] == expected

    with serving(create_app(client, auth=NO_AUTH, allowed_hosts=LOOPBACK_HOSTS)) as url:
        status, _, page = fetch(url + workflow_href(handle.workflow_id))
        assert status == 200
        for i in range(1, 11):
            assert f'<td class="executor">{host} <span class="pid">{ran[f"step{i}"]}</span></td>' in page
        _, _, api = fetch(url + "/api" + workflow_href(handle.workflow_id))
    assert [s["executor"] for s in json.loads(api)["steps"]] == expected
    client.store.db.dispose()


def test_dashboard_paginates_and_reports_unknown_workflows(env: Env, dashboard: str) -> None:
    for i in range(5):
        env.client.enqueue("bulk", args=[i], workflow_id=f"wf-{i}")
        time.sleep(0.002)  # distinct created_at_ms: newest first is a stable order

    _, _, page = fetch(dashboard + "/?limit=2")
    assert "wf-4" in page and "wf-3" in page and "wf-2" not in page
    assert "offset=2" in page and "newer" not in page
    _, _, page = fetch(dashboard + "/?limit=2&offset=4")
    assert "wf-0" in page and "wf-1" not in page and "older" not in page and "newer" in page
    body = json.loads(fetch(dashboard + "/api/workflows?limit=2&offset=2")[2])
    assert [w["workflow_id"] for w in body["workflows"]] == ["wf-2", "wf-1"] and body["more"] is True

    status, _, page = fetch(dashboard + "/workflows/%3Cnope%3E")
    assert status == 404 and "&lt;nope&gt;" in page and "<nope>" not in page
    status, content_type, api = fetch(dashboard + "/api/workflows/nope")
    assert status == 404 and content_type == "application/json" and "not found" in json.loads(api)["error"]
    assert fetch(dashboard + "/?status=DONE")[0] == 400
    assert fetch(dashboard + "/?limit=abc")[0] == 400
    assert fetch(dashboard + "/nowhere")[0] == 404


def test_worker_wrapper_passes_options_after_double_dash_to_celery(tmp_path: Path) -> None:
    result = run_durable("worker", "--", "--help", database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}", home=tmp_path)
    assert "--concurrency" in ok(result)


def test_queues_and_schedules_from_the_command_line(env: Env) -> None:
    from durable.limits import QueueLimits
    from durable.schedules import Schedule

    ok(env.run("migrate"))
    store = env.client.store
    store.upsert_queue(QueueLimits("emails", concurrency=10, rate_limit="100/m"), 0)
    store.upsert_schedule(Schedule("nightly", "nightly", cron="0 3 * * *"), 0)
    env.client.enqueue("send_mail", queue="emails")
    # a table for people, --json for scripts (as every command)
    table = ok(env.run("queues", "list")).splitlines()
    assert table[0].split()[:2] == ["name", "concurrency"] and any(l.split()[:2] == ["emails", "10"] for l in table)
    [emails] = [q for q in json.loads(ok(env.run("queues", "list", "--json"))) if q["name"] == "emails"]
    assert (emails["concurrency"], emails["rate_limit"], emails["backlog"]) == (10, "100/m", 1)
    [nightly] = json.loads(ok(env.run("schedules", "list", "--json")))
    assert nightly["cron"] == "0 3 * * *" and nightly["paused"] is False
    assert ok(env.run("schedules", "pause", "nightly")).strip() == "paused nightly"
    assert json.loads(ok(env.run("schedules", "list", "--json")))[0]["paused"] is True
    assert json.loads(ok(env.run("schedules", "resume", "nightly", "--json"))) == {"resumed": "nightly"}
    tick = ok(env.run("schedules", "trigger", "nightly")).strip()
    assert tick.startswith("nightly@") and env.client.get(tick).name == "nightly"
    assert "no schedule named 'nope'" in fails_cleanly(env.run("schedules", "pause", "nope"))


def set_status(client: DurableClient, workflow_id: str, status: str, error: BaseException | None = None) -> None:
    """A workflow ended as a worker would have ended it."""
    from sqlalchemy import update

    from durable.schema import workflows
    from durable.serialization import dumps_error

    with client.store.db.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.workflow_id == workflow_id).values(
            status=status, error=dumps_error(error) if error else None,
            completed_at_ms=int(time.time() * 1000), last_death="signal 9 (SIGKILL)" if error is None else None,
        ))


def test_json_everywhere_filters_and_bulk_retry(tmp_path: Path) -> None:
    url, home = f"sqlite:///{tmp_path / 'x.sqlite3'}", tmp_path / "home"
    client = DurableClient(settings=Settings(home=str(home), database_url=url))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_durable(*args, database_url=url, home=home)

    for wid in ("order-1", "order-2", "mail-1"):
        client.enqueue("process", args=[wid], workflow_id=wid)
    add_step(client, "order-1", 0, "reserve")
    add_step(client, "order-1", 1, "charge", status="ERROR", output=None, error=None)
    set_status(client, "order-1", "ERROR", RuntimeError("card declined"))
    set_status(client, "order-2", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")

    rows = json.loads(ok(run("workflows", "list", "--id-contains", "ORDER", "--json")))
    assert {r["workflow_id"] for r in rows} == {"order-1", "order-2"}
    assert all(r["inputs"] is None and r["output"] is None for r in rows)  # summaries only
    recent = json.loads(ok(run("workflows", "list", "--created-after", "1h", "--status", "ERROR", "--json")))
    assert [r["workflow_id"] for r in recent] == ["order-1"] and recent[0]["error"]["message"] == "card declined"
    assert json.loads(ok(run("workflows", "list", "--created-before", "2000-01-01", "--json"))) == []
    shown = json.loads(ok(run("workflows", "show", "order-1", "--json")))
    assert shown["workflow"]["inputs"]["args"] == ["order-1"] and [s["name"] for s in shown["steps"]] == ["reserve", "charge"]

    # quarantined: resumed in place; ERROR: forked from its failed step, once
    report = json.loads(ok(run("workflows", "retry", "--json")))
    assert report["resumed"] == ["order-2"] and report["forked"] == {"order-1": "order-1:retry"}
    assert client.get("order-2").status is Status.ENQUEUED
    assert [s.name for s in client.list_steps("order-1:retry")] == ["reserve"]
    again = ok(run("workflows", "retry", "--status", "ERROR"))
    assert "skipped order-1: already retried as order-1:retry" in again and "forked 0" in again

    assert json.loads(ok(run("workflows", "cancel", "mail-1", "--json"))) == {"cancelled": ["mail-1"]}
    assert json.loads(ok(run("workflows", "resume", "mail-1", "--json"))) == {"resumed": "mail-1"}
    forked = json.loads(ok(run("workflows", "fork", "mail-1", "--from-step", "0", "--new-id", "mail-2", "--json")))
    assert forked == {"forked": "mail-1", "from_step": 0, "workflow_id": "mail-2"}
    assert json.loads(ok(run("migrate", "--json")))["revision"] == Database.head_revision()

    usage = fails_cleanly(run("workflows", "list", "--created-after", "yesterday"), code=2)
    assert "Invalid value for '--created-after'" in usage
    assert "Usage:" in fails_cleanly(run("workflows", "frobnicate"), code=2)
    # a dashboard on another address than loopback needs credentials: one line, exit 1
    refused = fails_cleanly(run("dashboard", "--host", "0.0.0.0", "--port", "0"))
    assert "refusing to serve the dashboard on 0.0.0.0 without authentication" in refused
    assert len(refused.strip().splitlines()) == 1
    client.store.db.dispose()


@pytest.mark.parametrize("env", ["sqlite"], indirect=True)  # a subprocess each: few of them
def test_breakers_and_gc_from_the_command_line(env: Env) -> None:
    import time

    from durable.breakers import CircuitBreaker

    env.client.store.db.migrate()
    env.client.store.upsert_breaker(CircuitBreaker("payments-api", 3, 60_000, 30_000), 0)
    ok(env.run("breakers", "open", "payments-api", "--seconds", "600"))
    [row] = json.loads(ok(env.run("breakers", "list", "--json")))
    assert (row["name"], row["state"]) == ("payments-api", "open")

    done = env.client.enqueue("old", allow_unknown=True, workflow_id="gc-me").workflow_id
    env.client.cancel(done)  # ended: CANCELLED
    running = env.client.enqueue("young", allow_unknown=True, workflow_id="keep-me").workflow_id
    time.sleep(1.1)
    assert json.loads(ok(env.run("gc", "--older-than", "1s", "--json"))) == {"deleted": 1}
    assert env.client.get(running).status is Status.ENQUEUED
    assert "older-than" in fails_cleanly(env.run("gc", "--older-than", "soon"))
