"""The dashboard: a small Starlette app with Jinja2 templates, served by
`durable dashboard` or mounted into your own ASGI app
(`create_app(management, prefix=...)`).

    /                        workflows: counts by status, a list filtered by status,
                             name, queue, creation time and text in the ID
    /workflows/<id>          one workflow: inputs, output, error and traceback,
                             recoveries, quarantine, and its steps as a timeline
    /api/workflows[/<id>]    the same as JSON (with a `version` the pages poll)
    POST /actions/cancel|resume|fork|retry   admin role and a CSRF token

Authentication and the Host allowlist: see `auth.py` and docs/operations.md.
"""

from __future__ import annotations

from .auth import NO_AUTH, Auth, Role
from .views import Dashboard, PageContext, workflow_href
from .web import create_app, serve, serving_policy

__all__ = ["NO_AUTH", "Auth", "Dashboard", "PageContext", "Role", "create_app", "serve", "serving_policy", "workflow_href"]
