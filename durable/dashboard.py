"""A read-only dashboard, standard library only: `durable dashboard`.

    /                      workflows by status: counts, a filtered, paginated list
    /workflows/<id>        one workflow: inputs, output, error, recovery, steps
    /api/workflows         the list as JSON (?status=&name=&queue=&limit=&offset=)
    /api/workflows/<id>    one workflow and its steps as JSON

Everything shown is escaped: workflow inputs and errors are user data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import html
import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from .client import Management
from .errors import WorkflowNotFoundError
from .records import Status, StepInfo, WorkflowStatus

logger = logging.getLogger("durable.dashboard")

PAGE_SIZE = 50
MAX_LIMIT = 500

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}pre{background:#f8f8f8;padding:6px;margin:0;white-space:pre-wrap;max-width:70em}
.SUCCESS{color:#1a7f37}.ERROR,.MAX_RECOVERY_ATTEMPTS_EXCEEDED{color:#c62828}.CANCELLED{color:#777}
.PENDING,.RETRYING{color:#b26a00}.ENQUEUED{color:#1565c0}a{color:#1565c0}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def workflow_href(workflow_id: str) -> str:
    return "/workflows/" + quote(workflow_id, safe="")


def _link(workflow_id: str | None) -> str:
    if not workflow_id:
        return ""
    return f'<a href="{esc(workflow_href(workflow_id))}">{esc(workflow_id)}</a>'


def _status(status: str) -> str:
    return f'<span class="{esc(status)}">{esc(status)}</span>'


def to_json(value: Any) -> Any:
    """Records (dataclasses, enums, datetimes) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return str(value)


class Dashboard:
    """Pages and JSON, computed from a `Management` (a `DurableClient` or `Durable`)."""

    def __init__(self, management: Management):
        self.management = management

    # --- data ----------------------------------------------------------------

    def query(self, params: dict[str, str]) -> tuple[dict[str, Any], list[WorkflowStatus]]:
        status = params.get("status") or None
        if status is not None and status not in Status.__members__:
            raise ValueError(f"unknown status {status!r}")
        limit = max(1, min(int(params.get("limit") or PAGE_SIZE), MAX_LIMIT))
        offset = max(0, int(params.get("offset") or 0))
        name = params.get("name") or None
        queue = params.get("queue") or None
        rows = self.management.list_workflows(
            status=status, name=name, queue=queue, limit=limit + 1, offset=offset
        )
        page: dict[str, Any] = {
            "status": status, "name": name, "queue": queue,
            "limit": limit, "offset": offset, "more": len(rows) > limit,
        }
        return page, rows[:limit]

    def detail(self, workflow_id: str) -> tuple[WorkflowStatus, list[StepInfo], list[WorkflowStatus]]:
        workflow = self.management.get(workflow_id)
        steps = self.management.list_steps(workflow_id)
        children = self.management.list_workflows(parent_workflow_id=workflow_id, limit=200)
        return workflow, steps, children

    def counts(self) -> dict[str, int]:
        found = self.management.store.count_by_status()
        return {s.value: found.get(s.value, 0) for s in Status}

    # --- JSON ----------------------------------------------------------------

    def api_list(self, params: dict[str, str]) -> dict[str, Any]:
        page, rows = self.query(params)
        return {"counts": self.counts(), **page, "workflows": to_json(rows)}

    def api_detail(self, workflow_id: str) -> dict[str, Any]:
        workflow, steps, children = self.detail(workflow_id)
        return {
            "workflow": to_json(workflow),
            "steps": to_json(steps),
            "children": [w.workflow_id for w in children],
        }

    # --- HTML ----------------------------------------------------------------

    def page_list(self, params: dict[str, str]) -> str:
        page, rows = self.query(params)
        counts = self.counts()
        keep = {k: page[k] for k in ("name", "queue") if page[k]}
        summary = "".join(
            f'<tr><td><a href="/?{esc(urlencode({**keep, "status": s}))}">{_status(s)}</a></td>'
            f"<td>{n}</td></tr>"
            for s, n in counts.items()
        )
        options = "".join(
            f'<option{" selected" if s == page["status"] else ""}>{esc(s)}</option>' for s in counts
        )
        form = (
            '<form method="get" action="/">status <select name="status"><option value="">any</option>'
            f'{options}</select> name <input name="name" value="{esc(page["name"])}"> '
            f'queue <input name="queue" value="{esc(page["queue"])}"> <button>filter</button></form>'
        )
        body = "".join(
            f"<tr><td>{_link(w.workflow_id)}</td><td>{esc(w.name)}</td><td>{_status(w.status)}</td>"
            f"<td>{esc(w.queue)}</td><td>{w.recovery_attempts}/{w.max_recovery_attempts}</td>"
            f"<td>{esc(_time(w.created_at))}</td><td>{esc(_time(w.completed_at))}</td>"
            f"<td>{esc(w.error.type + ': ' + w.error.message) if w.error else ''}</td></tr>"
            for w in rows
        )
        table = (
            "<table><tr><th>workflow</th><th>name</th><th>status</th><th>queue</th><th>recovery</th>"
            f"<th>created</th><th>completed</th><th>error</th></tr>{body}</table>"
            if rows else "<p>No workflows match.</p>"
        )
        base = {k: v for k, v in page.items() if k in ("status", "name", "queue") and v}
        nav = []
        if page["offset"] > 0:
            prev = {**base, "offset": max(0, page["offset"] - page["limit"]), "limit": page["limit"]}
            nav.append(f'<a href="/?{esc(urlencode(prev))}">&larr; newer</a>')
        if page["more"]:
            nxt = {**base, "offset": page["offset"] + page["limit"], "limit": page["limit"]}
            nav.append(f'<a href="/?{esc(urlencode(nxt))}">older &rarr;</a>')
        first = page["offset"] + 1 if rows else 0
        return _document(
            "durable: workflows",
            f'<h1>Workflows</h1><table><tr><th>status</th><th>count</th></tr>{summary}</table>{form}'
            f"<p>showing {first}&ndash;{page['offset'] + len(rows)} {' '.join(nav)}</p>{table}",
        )

    def page_detail(self, workflow_id: str) -> str:
        w, steps, children = self.detail(workflow_id)
        facts = [
            ("status", _status(w.status)), ("name", esc(w.name)), ("queue", esc(w.queue)),
            ("dedup key", esc(w.dedup_key)), ("priority", esc(w.priority)),
            ("recovery attempts", f"{w.recovery_attempts} of at most {w.max_recovery_attempts}"),
            ("last worker death", esc(w.last_death)), ("executor", esc(w.executor)),
            ("app version", esc(w.app_version)), ("parent", _link(w.parent_workflow_id)),
            ("created", esc(_time(w.created_at))), ("started", esc(_time(w.started_at))),
            ("completed", esc(_time(w.completed_at))), ("updated", esc(_time(w.updated_at))),
            ("inputs", f"<pre>{esc(_pretty(w.inputs))}</pre>"),
        ]
        if w.status is Status.SUCCESS:
            facts.append(("output", f"<pre>{esc(_pretty(w.output))}</pre>"))
        if w.error:
            trace = f"\n\n{w.error.traceback}" if w.error.traceback else ""
            facts.append(("error", f"<pre>{esc(w.error.type)}: {esc(w.error.message)}{esc(trace)}</pre>"))
        info = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in facts)
        timeline = "".join(_step_row(s) for s in steps)
        steps_html = (
            "<table><tr><th>#</th><th>step</th><th>status</th><th>attempts</th><th>crashes</th>"
            "<th>last crash</th><th>started</th><th>completed</th><th>duration</th><th>child</th>"
            f"<th>outcome</th></tr>{timeline}</table>" if steps else "<p>No step has checkpointed yet.</p>"
        )
        kids = "".join(f"<li>{_link(c.workflow_id)} {esc(c.name)} {_status(c.status)}</li>" for c in children)
        return _document(
            f"durable: {w.workflow_id}",
            f'<p><a href="/">&larr; all workflows</a></p><h1>{esc(w.workflow_id)}</h1>'
            f"<table>{info}</table><h2>Steps</h2>{steps_html}"
            + (f"<h2>Child workflows</h2><ul>{kids}</ul>" if kids else ""),
        )


def _step_row(s: StepInfo) -> str:
    duration = ""
    if s.started_at and s.completed_at:
        duration = f"{(s.completed_at - s.started_at).total_seconds():.3f}s"
    if s.error:
        outcome = f"{s.error.type}: {s.error.message}"
    else:
        outcome = _pretty(s.output) if s.output is not None else ""
    return (
        f"<tr><td>{s.step_id}</td><td>{esc(s.name)}</td><td>{_status(s.status)}</td>"
        f"<td>{s.attempts}</td><td>{s.crashes}</td><td>{esc(s.last_crash)}</td>"
        f"<td>{esc(_time(s.started_at))}</td><td>{esc(_time(s.completed_at))}</td><td>{duration}</td>"
        f"<td>{_link(s.child_workflow_id)}</td><td><pre>{esc(outcome[:2000])}</pre></td></tr>"
    )


def _document(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )


class Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard  # set on the subclass that make_server builds

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/") or "/"
        try:
            if path == "/":
                self._send(HTTPStatus.OK, self.dashboard.page_list(params))
            elif path.startswith("/workflows/"):
                self._send(HTTPStatus.OK, self.dashboard.page_detail(unquote(path[len("/workflows/"):])))
            elif path == "/api/workflows":
                self._send_json(HTTPStatus.OK, self.dashboard.api_list(params))
            elif path.startswith("/api/workflows/"):
                self._send_json(HTTPStatus.OK, self.dashboard.api_detail(unquote(path[len("/api/workflows/"):])))
            else:
                self._fail(HTTPStatus.NOT_FOUND, f"no page at {url.path}")
        except WorkflowNotFoundError as exc:
            self._fail(HTTPStatus.NOT_FOUND, str(exc))
        except ValueError as exc:
            self._fail(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            logger.exception("dashboard request %s failed", self.path)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the dashboard's log)")

    def _fail(self, code: HTTPStatus, message: str) -> None:
        if self.path.startswith("/api/"):
            self._send_json(code, {"error": message})
        else:
            self._send(code, _document(f"{code.value} {code.phrase}", f"<h1>{code.value} {code.phrase}</h1>"
                                       f'<p>{esc(message)}</p><p><a href="/">all workflows</a></p>'))

    def _send(self, code: HTTPStatus, text: str, content_type: str = "text/html; charset=utf-8") -> None:
        data = text.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, code: HTTPStatus, value: Any) -> None:
        self._send(code, json.dumps(value, indent=2, default=str), "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logger.info("%s %s", self.address_string(), format % args)


def make_server(management: Management, host: str = "127.0.0.1", port: int = 8300) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port); call serve_forever()."""
    handler = type("DashboardHandler", (Handler,), {"dashboard": Dashboard(management)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(management: Management, host: str = "127.0.0.1", port: int = 8300) -> None:
    server = make_server(management, host, port)
    print(f"durable dashboard on http://{host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
