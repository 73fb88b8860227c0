"""What the dashboard shows, computed from a `Management` (a `DurableClient`
or `Durable`) and rendered with Jinja2 (autoescaped: workflow IDs, inputs
and errors are user data). Knows nothing of HTTP; `web.py` serves it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote, urlencode

import jinja2

from ..client import Management
from ..records import Status, StepInfo, StepStatus, WorkflowStatus
from ..workflow_admin import WorkflowFilter, parse_instant, search, to_json

PAGE_SIZE = 50
MAX_LIMIT = 500
FILTER_KEYS = ("status", "name", "queue", "after", "before", "q")

# A dispatched step runs as a one-step child workflow with one of these names.
DISPATCHED_PREFIXES = {"durable.step:": "dispatched step", "durable.task:": "task step"}


def workflow_href(workflow_id: str) -> str:
    """The path of a workflow's page, relative to the dashboard's root."""
    return "/workflows/" + quote(workflow_id, safe="")


def _time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> str:
    return f"{(end - start).total_seconds():.3f}s" if start and end else ""


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("durable.dashboard", "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)
_ENV.filters.update(time=_time, pretty=_pretty, href=workflow_href)


@dataclass(frozen=True)
class PageContext:
    """Per request: where the dashboard is served, who asks, the CSRF token
    for its forms, a notice to show (after an action), how often to poll."""

    base: str = ""
    admin: bool = False
    user: str = ""
    csrf: str = ""
    notice: str = ""
    poll_seconds: float = 3.0


@dataclass(frozen=True)
class StepView:
    step: StepInfo
    duration: str
    bar_x: float  # percent of the timeline
    bar_width: float
    retries: int
    crash_cause: str
    child: WorkflowStatus | None
    child_kind: str
    outcome: str
    worker_host: str  # of the process that ran the step ("host:pid" split)
    worker_pid: str


class Dashboard:
    """Pages and JSON for the workflow list and one workflow."""

    def __init__(self, management: Management):
        self.management = management

    # --- data ----------------------------------------------------------------

    def parse_filter(self, params: Mapping[str, str]) -> WorkflowFilter:
        status = params.get("status") or None
        if status is not None and status not in Status.__members__:
            raise ValueError(f"unknown status {status!r}")
        now = dt.datetime.now(dt.timezone.utc)
        after, before = params.get("after") or None, params.get("before") or None
        return WorkflowFilter(
            statuses=(Status(status),) if status else (),
            name=params.get("name") or None, queue=params.get("queue") or None,
            created_after=parse_instant(after, now) if after else None,
            created_before=parse_instant(before, now) if before else None,
            id_contains=params.get("q") or None,
        )

    def query(self, params: Mapping[str, str]) -> tuple[dict[str, Any], list[WorkflowStatus]]:
        where = self.parse_filter(params)
        try:
            limit = max(1, min(int(params.get("limit") or PAGE_SIZE), MAX_LIMIT))
            offset = max(0, int(params.get("offset") or 0))
        except ValueError:
            raise ValueError("limit and offset must be integers") from None
        rows = search(self.management, where, limit=limit + 1, offset=offset)
        page: dict[str, Any] = {k: params.get(k) or None for k in FILTER_KEYS}
        page.update(limit=limit, offset=offset, more=len(rows) > limit)
        return page, rows[:limit]

    def counts(self) -> dict[str, int]:
        found = self.management.store.count_by_status()
        return {s.value: found.get(s.value, 0) for s in Status}

    def detail(self, workflow_id: str) -> tuple[WorkflowStatus, list[StepInfo], list[WorkflowStatus]]:
        workflow = self.management.get(workflow_id)
        steps = self.management.list_steps(workflow_id)
        children = self.management.list_workflows(parent_workflow_id=workflow_id, limit=500)
        return workflow, steps, children

    # --- JSON ----------------------------------------------------------------

    def api_list(self, params: Mapping[str, str]) -> dict[str, Any]:
        page, rows = self.query(params)
        return self._list_json(page, rows, self.counts())

    def api_detail(self, workflow_id: str) -> dict[str, Any]:
        return self._detail_json(*self.detail(workflow_id))

    @staticmethod
    def _list_json(page: dict[str, Any], rows: list[WorkflowStatus], counts: dict[str, int]) -> dict[str, Any]:
        body = {"counts": counts, **page, "workflows": to_json(rows)}
        return {**body, "version": _version(body)}

    @staticmethod
    def _detail_json(w: WorkflowStatus, steps: list[StepInfo], children: list[WorkflowStatus]) -> dict[str, Any]:
        body = {
            "workflow": to_json(w), "steps": to_json(steps),
            "children": [c.workflow_id for c in children],
            "child_statuses": {c.workflow_id: c.status.value for c in children},
        }
        return {**body, "version": _version(body)}

    # --- HTML ----------------------------------------------------------------

    def page_list(self, params: Mapping[str, str], ctx: PageContext = PageContext()) -> str:
        page, rows = self.query(params)
        counts = self.counts()
        filters = {k: page[k] for k in FILTER_KEYS if page[k]}
        keep = {k: v for k, v in filters.items() if k != "status"}
        nav = {}
        if page["offset"] > 0:
            nav["newer"] = urlencode({**filters, "offset": max(0, page["offset"] - page["limit"]), "limit": page["limit"]})
        if page["more"]:
            nav["older"] = urlencode({**filters, "offset": page["offset"] + page["limit"], "limit": page["limit"]})
        return _ENV.get_template("list.html").render(
            ctx=ctx, page=page, rows=rows, counts=counts, statuses=[s.value for s in Status],
            status_links={s: urlencode({**keep, "status": s}) for s in counts},
            nav=nav, filters=filters,
            query=urlencode({**filters, "limit": page["limit"], "offset": page["offset"]}),
            retryable=(not page["status"]) or page["status"] in ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"),
            version=self._list_json(page, rows, counts)["version"],
        )

    def page_detail(self, workflow_id: str, ctx: PageContext = PageContext()) -> str:
        w, steps, children = self.detail(workflow_id)
        by_id = {c.workflow_id: c for c in children}
        return _ENV.get_template("workflow.html").render(
            ctx=ctx, w=w, steps=_timeline(w, steps, by_id),
            other_children=[c for c in children if c.workflow_id not in {s.child_workflow_id for s in steps}],
            quarantined=w.status is Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED,
            cancellable=not w.status.is_terminal,
            resumable=w.status in (Status.CANCELLED, Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED),
            version=self._detail_json(w, steps, children)["version"],
        )

    def page_error(self, code: int, phrase: str, message: str, ctx: PageContext = PageContext()) -> str:
        return _ENV.get_template("error.html").render(ctx=ctx, code=code, phrase=phrase, message=message)


def _version(body: dict[str, Any]) -> str:
    """A fingerprint of what a page shows: the page polls it and reloads its
    live part when it changes."""
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _crash_cause(last_crash: str | None) -> str:
    if not last_crash:
        return ""
    try:
        record = json.loads(last_crash)
    except ValueError:
        return last_crash
    if not isinstance(record, dict):
        return last_crash
    return f"attempt {record.get('attempt')}: {record.get('cause')}"


def _timeline(w: WorkflowStatus, steps: list[StepInfo], children: dict[str, WorkflowStatus]) -> list[StepView]:
    """Each step with a bar on one time axis: from the workflow's first step
    (or its start) to the last end (or now, while a step runs)."""
    now = dt.datetime.now(dt.timezone.utc)
    starts = [s.started_at for s in steps if s.started_at]
    t0 = min(starts + [w.started_at] if w.started_at else starts, default=None)
    ends = [s.completed_at or now for s in steps if s.started_at]
    t1 = max(ends, default=None)
    span = (t1 - t0).total_seconds() if t0 and t1 else 0.0
    views = []
    for s in steps:
        x = width = 0.0
        if s.started_at and t0 and span > 0:
            end = s.completed_at or now
            x = (s.started_at - t0).total_seconds() / span * 100
            width = max((end - s.started_at).total_seconds() / span * 100, 0.5)
            x = min(x, 100 - width)
        child = children.get(s.child_workflow_id or "")
        kind = ""
        if s.child_workflow_id:
            kind = "child workflow"
            for prefix, label in DISPATCHED_PREFIXES.items():
                if child is not None and child.name.startswith(prefix):
                    kind = label
        if s.error:
            outcome = f"{s.error.type}: {s.error.message}"
        else:
            outcome = json.dumps(s.output, default=str, ensure_ascii=False) if s.output is not None else ""
        host, colon, pid = (s.executor or "").rpartition(":")  # a lease owner is "host:pid"
        if not colon:
            host, pid = s.executor or "", ""
        failed_attempts = len(s.attempt_errors or [])
        retries = max(s.attempts - 1, 0) if s.status is not StepStatus.RETRYING else failed_attempts
        views.append(StepView(
            step=s, duration=_seconds(s.started_at, s.completed_at), bar_x=round(x, 2), bar_width=round(width, 2),
            retries=retries, crash_cause=_crash_cause(s.last_crash), child=child, child_kind=kind,
            outcome=outcome[:2000], worker_host=host, worker_pid=pid,
        ))
    return views
