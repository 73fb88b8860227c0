"""The dashboard as a Starlette app: routes, the auth and Host guard, CSRF
on actions, and `serve()` (uvicorn) for `durable dashboard`."""

from __future__ import annotations

import logging
import socket
from typing import Awaitable, Callable, Sequence
from urllib.parse import quote, unquote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..client import Management
from ..errors import DurableError, WorkflowNotFoundError
from ..workflow_admin import retry_failed
from .auth import LOOPBACK_HOSTS, NO_AUTH, Auth, Csrf, Identity, allowed_hosts_from_env, host_allowed, is_loopback
from .views import FILTER_KEYS, Dashboard, PageContext, workflow_href

logger = logging.getLogger("durable.dashboard")

IDENTITY_KEY = "durable.identity"
NOTICE_COOKIE = "durable_notice"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


class Guard:
    """ASGI middleware in front of every route: the Host header must be
    allowed (a DNS-rebinding page cannot reach a loopback dashboard), and
    the caller must authenticate (basic auth or a bearer token) unless the
    dashboard is open."""

    def __init__(self, app: ASGIApp, auth: Auth, allowed_hosts: Sequence[str] | None):
        self.app = app
        self.auth = auth
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            await PlainTextResponse("host not allowed (DURABLE_DASHBOARD_ALLOWED_HOSTS)", 400)(scope, receive, send)
            return
        identity = self.auth.identify(headers.get("authorization"))
        if identity is None:
            challenge = {"WWW-Authenticate": 'Basic realm="durable dashboard", charset="UTF-8"'}
            await PlainTextResponse("authentication required", 401, headers=challenge)(scope, receive, send)
            return
        scope[IDENTITY_KEY] = identity
        await self.app(scope, receive, send)


def create_app(
    management: Management,
    prefix: str = "",
    auth: Auth | None = None,
    allowed_hosts: Sequence[str] | None = None,
    poll_seconds: float = 3.0,
    csrf_secret: bytes | None = None,
) -> Starlette:
    """The dashboard as an ASGI app.

    `prefix`: serve every page under this path (e.g. "/durable") when the
    app receives full paths; when a Starlette/FastAPI app mounts it
    (`app.mount("/durable", create_app(client))`), give none: links follow
    the mount point either way.
    `auth`: `Auth.from_env()` when None, which must name credentials; pass
    `NO_AUTH` when your own app authenticates before the dashboard.
    `allowed_hosts`: Host header values accepted (None: DURABLE_DASHBOARD_ALLOWED_HOSTS,
    and when that is unset, any host: the embedding app checks)."""
    if auth is None:
        auth = Auth.from_env()
        if not auth.enabled:
            raise ValueError(
                "the dashboard needs credentials: set DURABLE_DASHBOARD_USERS or DURABLE_DASHBOARD_TOKEN, "
                "or pass auth=NO_AUTH when your app authenticates before it"
            )
    if allowed_hosts is None:
        allowed_hosts = allowed_hosts_from_env()
    pages = Pages(Dashboard(management), Csrf(csrf_secret), poll_seconds)
    routes: list[BaseRoute] = [
        Route("/", pages.list_page, methods=["GET"]),
        Route("/workflows/{workflow_id:path}", pages.workflow_page, methods=["GET"]),
        Route("/api/workflows", pages.api_list, methods=["GET"]),
        Route("/api/workflows/{workflow_id:path}", pages.api_detail, methods=["GET"]),
        Route("/actions/{action}", pages.action, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("durable.dashboard", "static")]), name="static"),
    ]
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    if prefix:
        routes = [Mount(prefix, routes=routes)]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, auth=auth, allowed_hosts=allowed_hosts)],
        exception_handlers={
            WorkflowNotFoundError: pages.not_found,
            ValueError: pages.bad_request,
            HTTPException: pages.http_error,
        },
    )


Handler = Callable[[Request], Awaitable[Response]]


class Pages:
    def __init__(self, dashboard: Dashboard, csrf: Csrf, poll_seconds: float):
        self.dashboard = dashboard
        self.csrf = csrf
        self.poll_seconds = poll_seconds

    # --- reading -------------------------------------------------------------

    async def list_page(self, request: Request) -> Response:
        ctx, cookies = self._context(request)
        html = await run_in_threadpool(self.dashboard.page_list, dict(request.query_params), ctx)
        return self._html(request, html, cookies)

    async def workflow_page(self, request: Request) -> Response:
        ctx, cookies = self._context(request)
        html = await run_in_threadpool(self.dashboard.page_detail, _workflow_id(request), ctx)
        return self._html(request, html, cookies)

    async def api_list(self, request: Request) -> Response:
        body = await run_in_threadpool(self.dashboard.api_list, dict(request.query_params))
        return JSONResponse(body, headers=SECURITY_HEADERS)

    async def api_detail(self, request: Request) -> Response:
        body = await run_in_threadpool(self.dashboard.api_detail, _workflow_id(request))
        return JSONResponse(body, headers=SECURITY_HEADERS)

    # --- actions -------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        identity: Identity = request.scope[IDENTITY_KEY]
        if not identity.admin:
            return PlainTextResponse("actions need the admin role", 403, headers=SECURITY_HEADERS)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        # a bearer token is never sent by a browser on its own: no CSRF to fear
        if identity.via != "bearer" and not self.csrf.check(request.cookies.get(Csrf.COOKIE), form.get(Csrf.FIELD)):
            return PlainTextResponse("missing or stale CSRF token: reload the page and try again", 403,
                                     headers=SECURITY_HEADERS)
        base = _base(request)
        workflow_id = form.get("workflow_id", "")
        action = request.path_params["action"]
        target = base + workflow_href(workflow_id) if workflow_id else base + "/"
        try:
            if action == "cancel":
                cancelled = await run_in_threadpool(self.dashboard.management.cancel, workflow_id)
                notice = f"cancelled {', '.join(cancelled)}" if cancelled else "nothing to cancel: it had already ended"
            elif action == "resume":
                await run_in_threadpool(self.dashboard.management.resume, workflow_id)
                notice = f"resumed {workflow_id}"
            elif action == "fork":
                from_step = int(form.get("from_step", ""))
                handle = await run_in_threadpool(self.dashboard.management.fork, workflow_id, from_step)
                notice = f"forked {workflow_id} from step {from_step} as {handle.workflow_id}"
                target = base + workflow_href(handle.workflow_id)
            elif action == "retry":
                filters = {k: form[k] for k in FILTER_KEYS if form.get(k)}
                where = self.dashboard.parse_filter(filters)
                report = await run_in_threadpool(retry_failed, self.dashboard.management, where)
                notice = "retry: " + report.summary()
                target = base + "/?" + urlencode(filters)
            else:
                return PlainTextResponse(f"no action {action!r}", 404, headers=SECURITY_HEADERS)
        except (DurableError, ValueError) as exc:
            notice = f"{action} failed: {exc}"
        logger.info("dashboard action %s by %s: %s", action, identity.name, notice)
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(NOTICE_COOKIE, quote(notice[:500]), max_age=60, path=base + "/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    # --- errors --------------------------------------------------------------

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 404, "Not Found", str(exc))

    async def bad_request(self, request: Request, exc: Exception) -> Response:
        return self._error(request, 400, "Bad Request", str(exc))

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        phrase = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
        message = f"no page at {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return self._error(request, exc.status_code, phrase, message)

    def _error(self, request: Request, code: int, phrase: str, message: str) -> Response:
        if "/api/" in request.url.path:
            return JSONResponse({"error": message}, code, headers=SECURITY_HEADERS)
        ctx = PageContext(base=_base(request))
        return HTMLResponse(self.dashboard.page_error(code, phrase, message, ctx), code, headers=SECURITY_HEADERS)

    # --- helpers -------------------------------------------------------------

    def _context(self, request: Request) -> tuple[PageContext, dict[str, str]]:
        """The page's context, and the cookies to set: a CSRF token when the
        request has no valid one, and the notice cleared once shown."""
        identity: Identity = request.scope[IDENTITY_KEY]
        token = request.cookies.get(Csrf.COOKIE)
        cookies = {}
        if not self.csrf.valid(token):
            token = cookies[Csrf.COOKIE] = self.csrf.new_token()
        notice = unquote(request.cookies.get(NOTICE_COOKIE, ""))
        if notice:
            cookies[NOTICE_COOKIE] = ""
        ctx = PageContext(
            base=_base(request), admin=identity.admin, user="" if identity.via == "open" else identity.name,
            csrf=token or "", notice=notice, poll_seconds=self.poll_seconds,
        )
        return ctx, cookies

    @staticmethod
    def _html(request: Request, html: str, cookies: dict[str, str]) -> Response:
        response = HTMLResponse(html, headers=SECURITY_HEADERS)
        for name, value in cookies.items():
            response.set_cookie(name, value, max_age=None if value else 0, path=_base(request) + "/",
                                httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _workflow_id(request: Request) -> str:
    return str(request.path_params["workflow_id"])


def serving_policy(host: str, auth: Auth | None = None, allowed_hosts: Sequence[str] | None = None
                   ) -> tuple[Auth, Sequence[str] | None]:
    """The auth and allowed hosts for a dashboard bound to `host`: without
    credentials only loopback is served; a loopback dashboard answers only
    to loopback names (a DNS-rebinding page cannot reach it)."""
    auth = Auth.from_env() if auth is None else auth
    if not auth.enabled and not auth.open:
        if not is_loopback(host):
            raise ValueError(
                f"refusing to serve the dashboard on {host} without authentication: set "
                "DURABLE_DASHBOARD_USERS (name:password:role,...) or DURABLE_DASHBOARD_TOKEN, "
                "or bind to 127.0.0.1"
            )
        auth = NO_AUTH
    if allowed_hosts is None:
        allowed_hosts = allowed_hosts_from_env()
    if allowed_hosts is None:
        if is_loopback(host):
            allowed_hosts = LOOPBACK_HOSTS
        elif host not in ("0.0.0.0", "::", ""):
            allowed_hosts = (host.lower(),)
        else:
            logger.warning("dashboard on %s accepts any Host header: set DURABLE_DASHBOARD_ALLOWED_HOSTS", host)
    return auth, allowed_hosts


def serve(
    management: Management, host: str = "127.0.0.1", port: int = 8300, prefix: str = "",
    auth: Auth | None = None, allowed_hosts: Sequence[str] | None = None,
) -> None:
    """Serve the dashboard with uvicorn until interrupted."""
    import uvicorn

    auth, allowed_hosts = serving_policy(host, auth, allowed_hosts)
    app = create_app(management, prefix=prefix, auth=auth, allowed_hosts=allowed_hosts)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"durable dashboard on http://{shown}:{sock.getsockname()[1]}{prefix.rstrip('/')}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False))
    server.run(sockets=[sock])

