"""The dashboard's guard, over real HTTP (uvicorn on loopback): basic auth
and bearer tokens with read and admin roles, CSRF on actions, the Host
allowlist, serving under a prefix or mounted in another ASGI app, and the
refusal to serve a non-loopback address without credentials."""

from __future__ import annotations

import base64
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from durable import DurableClient, Settings, Status
from durable.dashboard import NO_AUTH, Auth, Role, create_app, serving_policy
from durable.dashboard.auth import LOOPBACK_HOSTS, Csrf
from tests.dashboard_harness import serving

ADMIN_TOKEN = "admin-token-0123456789"
READ_TOKEN = "read-token-0123456789"
AUTH = Auth(
    users={"ada": ("ada-pw", Role.ADMIN), "rita": ("rita-pw", Role.READ)},
    tokens={ADMIN_TOKEN: Role.ADMIN, READ_TOKEN: Role.READ},
)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[DurableClient]:
    c = DurableClient(settings=Settings(home=str(tmp_path / "home"), database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}"))
    yield c
    c.store.db.dispose()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    """urllib with a cookie jar and no redirects followed: what a browser sends."""

    def __init__(self, base: str, authorization: str | None = None):
        self.base = base
        self.authorization = authorization
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect()
        )

    def request(self, path: str, form: dict[str, str] | None = None, **headers: str) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        if self.authorization:
            request.add_header("Authorization", self.authorization)
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def test_roles_csrf_and_hosts(client: DurableClient) -> None:
    wid = client.enqueue("process_order", workflow_id="wf-1").workflow_id
    with serving(create_app(client, auth=AUTH, allowed_hosts=LOOPBACK_HOSTS)) as url:
        status, headers, _ = Browser(url).request("/")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert Browser(url, basic("ada", "wrong")).request("/")[0] == 401
        assert Browser(url, basic("nobody", "ada-pw")).request("/api/workflows")[0] == 401
        assert Browser(url, "Bearer not-a-token").request("/api/workflows")[0] == 401

        # read-only: sees everything, no action forms, actions refused
        rita = Browser(url, basic("rita", "rita-pw"))
        status, _, page = rita.request("/workflows/wf-1")
        assert status == 200 and "wf-1" in page and "rita · read-only" in page and 'id="cancel"' not in page
        status, _, _ = rita.request("/actions/cancel", {"workflow_id": wid, "csrf": "x"})
        assert status == 403 and client.get(wid).status is Status.ENQUEUED
        assert Browser(url, f"Bearer {READ_TOKEN}").request("/api/workflows/wf-1")[0] == 200

        # admin by basic auth: the form's token and the cookie it came with, both needed
        ada = Browser(url, basic("ada", "ada-pw"))
        status, headers, page = ada.request("/workflows/wf-1")
        assert status == 200 and 'id="cancel"' in page
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
        assert headers["x-frame-options"] == "DENY" and "script-src 'self'" in headers["content-security-policy"]
        token = csrf_of(page)
        assert ada.request("/actions/cancel", {"workflow_id": wid})[0] == 403
        stranger = Browser(url, basic("ada", "ada-pw"))  # a cross-site form: the token, not the cookie
        assert stranger.request("/actions/cancel", {"workflow_id": wid, "csrf": token})[0] == 403
        forged = Csrf().new_token()  # signed with another secret
        assert ada.request("/actions/cancel", {"workflow_id": wid, "csrf": forged}, Cookie=f"durable_csrf={forged}")[0] == 403
        assert client.get(wid).status is Status.ENQUEUED
        status, headers, _ = ada.request("/actions/cancel", {"workflow_id": wid, "csrf": token})
        assert status == 303 and headers["location"] == "/workflows/wf-1"
        assert client.get(wid).status is Status.CANCELLED
        _, _, page = ada.request("/workflows/wf-1")
        assert "cancelled wf-1" in page and 'id="resume"' in page  # the notice, once

        # a bearer token is not sent by a browser on its own: no CSRF token needed
        admin_api = Browser(url, f"Bearer {ADMIN_TOKEN}")
        assert admin_api.request("/actions/resume", {"workflow_id": wid})[0] == 303
        assert client.get(wid).status is Status.ENQUEUED
        status, headers, _ = admin_api.request("/actions/fork", {"workflow_id": wid, "from_step": "0"})
        assert status == 303 and headers["location"].startswith("/workflows/")
        # a failed action is a notice on the page, not an error page
        status, headers, _ = admin_api.request("/actions/resume", {"workflow_id": wid})
        assert status == 303 and "resume failed" in urllib.parse.unquote(headers["set-cookie"])

        # DNS rebinding: a page on evil.example that resolves to 127.0.0.1
        assert ada.request("/", Host="evil.example")[0] == 400
        assert ada.request("/", Host="localhost:8300")[0] == 200


def test_prefix_and_mounted_in_another_app(client: DurableClient) -> None:
    client.enqueue("process_order", workflow_id="wf/1")
    with serving(create_app(client, prefix="/ops/", auth=NO_AUTH, allowed_hosts=LOOPBACK_HOSTS)) as url:
        status, _, page = Browser(url).request("/ops/")
        assert status == 200 and 'href="/ops/workflows/wf%2F1"' in page and 'href="/ops/static/dashboard.css"' in page
        assert Browser(url).request("/ops/static/dashboard.js")[0] == 200
        assert Browser(url).request("/ops/workflows/wf%2F1")[0] == 200
        assert Browser(url).request("/")[0] == 404

    outer = Starlette(routes=[Mount("/durable", app=create_app(client, auth=NO_AUTH))])
    with serving(outer) as url:
        status, headers, page = Browser(url).request("/durable/")
        assert status == 200 and 'href="/durable/workflows/wf%2F1"' in page
        assert "Path=/durable/" in headers["set-cookie"]
        assert Browser(url).request("/durable/api/workflows/wf%2F1")[0] == 200


def test_no_credentials_no_dashboard_beyond_loopback(monkeypatch: pytest.MonkeyPatch, client: DurableClient) -> None:
    for name in ("DURABLE_DASHBOARD_USERS", "DURABLE_DASHBOARD_TOKEN", "DURABLE_DASHBOARD_READ_TOKEN",
                 "DURABLE_DASHBOARD_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="refusing to serve the dashboard on 0.0.0.0 without authentication"):
        serving_policy("0.0.0.0")
    with pytest.raises(ValueError, match="without authentication"):
        serving_policy("192.0.2.7")
    assert serving_policy("127.0.0.1") == (NO_AUTH, LOOPBACK_HOSTS)
    assert serving_policy("::1") == (NO_AUTH, LOOPBACK_HOSTS)
    with pytest.raises(ValueError, match="the dashboard needs credentials"):
        create_app(client)  # embedded: say NO_AUTH when the app authenticates

    monkeypatch.setenv("DURABLE_DASHBOARD_USERS", "ada:pa:ss:admin, rita:pw:read")
    monkeypatch.setenv("DURABLE_DASHBOARD_TOKEN", ADMIN_TOKEN)
    auth, hosts = serving_policy("192.0.2.7")
    assert auth.users == {"ada": ("pa:ss", Role.ADMIN), "rita": ("pw", Role.READ)}
    assert auth.tokens == {ADMIN_TOKEN: Role.ADMIN} and hosts == ("192.0.2.7",)
    monkeypatch.setenv("DURABLE_DASHBOARD_ALLOWED_HOSTS", "ops.example.com, 10.0.0.5")
    assert serving_policy("0.0.0.0")[1] == ("ops.example.com", "10.0.0.5")

    monkeypatch.setenv("DURABLE_DASHBOARD_USERS", "ada:secret:root")
    with pytest.raises(ValueError, match="role read or admin"):
        Auth.from_env()
    monkeypatch.setenv("DURABLE_DASHBOARD_USERS", "")
    monkeypatch.setenv("DURABLE_DASHBOARD_TOKEN", "short")
    with pytest.raises(ValueError, match="at least 16"):
        Auth.from_env()
