"""Who may see and steer the dashboard: credentials and roles from the
environment, the Host header allowlist, and CSRF tokens for actions.

    DURABLE_DASHBOARD_USERS          basic auth: "alice:secret:admin,bob:pw2:read"
    DURABLE_DASHBOARD_TOKEN          a bearer token with the admin role
    DURABLE_DASHBOARD_READ_TOKEN     a bearer token with the read role
    DURABLE_DASHBOARD_ALLOWED_HOSTS  Host header values accepted ("*": any)
    DURABLE_DASHBOARD_SECRET         signs CSRF tokens (default: random per process)

The read role sees everything; the admin role may also cancel, resume, fork
and retry. Without credentials the dashboard serves only on loopback.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from typing import Mapping, Sequence

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Role(str, enum.Enum):
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    via: str  # "basic", "bearer" or "open"

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class Auth:
    """Basic-auth users (`{name: (password, role)}`) and bearer tokens
    (`{token: role}`). `open=True` (NO_AUTH) lets every request in as admin:
    for loopback, or an app that authenticates before the dashboard."""

    users: Mapping[str, tuple[str, Role]] = field(default_factory=dict)
    tokens: Mapping[str, Role] = field(default_factory=dict)
    open: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.tokens)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Auth:
        env = os.environ if environ is None else environ
        users: dict[str, tuple[str, Role]] = {}
        for entry in (env.get("DURABLE_DASHBOARD_USERS") or "").split(","):
            if not entry.strip():
                continue
            name, _, rest = entry.strip().partition(":")
            password, _, role = rest.rpartition(":")
            if not name or not password or role not in Role._value2member_map_:
                raise ValueError(
                    "DURABLE_DASHBOARD_USERS: each entry is name:password:role with role read or admin, "
                    f"got {name or entry.strip()!r}..."
                )
            users[name] = (password, Role(role))
        tokens: dict[str, Role] = {}
        for variable, role in (("DURABLE_DASHBOARD_READ_TOKEN", Role.READ), ("DURABLE_DASHBOARD_TOKEN", Role.ADMIN)):
            token = (env.get(variable) or "").strip()
            if token:
                if len(token) < 16:
                    raise ValueError(f"{variable} must be at least 16 characters")
                tokens[token] = role
        return cls(users, tokens)

    def identify(self, authorization: str | None) -> Identity | None:
        """The caller named by an Authorization header, or None."""
        if self.open:
            return Identity("anonymous", Role.ADMIN, "open")
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            for token, role in self.tokens.items():
                if hmac.compare_digest(token.encode(), value.encode()):
                    return Identity("token", role, "bearer")
        elif scheme.lower() == "basic" and value:
            try:
                name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            expected = self.users.get(name)
            # compare against something either way: no timing hint whether the name exists
            known_password, role = expected or ("\0" * 32, Role.READ)
            if hmac.compare_digest(known_password.encode(), password.encode()) and expected:
                return Identity(name, role, "basic")
        return None


NO_AUTH = Auth(open=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    env = os.environ if environ is None else environ
    raw = env.get("DURABLE_DASHBOARD_ALLOWED_HOSTS") or ""
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    return hosts or None


def host_allowed(host_header: str | None, allowed: Sequence[str] | None) -> bool:
    """Whether a Host header (with or without its port) names an allowed
    host; None allows any (the embedding app checks), "*" too."""
    if allowed is None or "*" in allowed:
        return True
    host = (host_header or "").strip().lower()
    if host.startswith("["):  # [::1]:8300
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host in allowed


class Csrf:
    """Signed double-submit tokens: a random value with its HMAC, set as a
    cookie and sent back in each action's form. A token must match the
    cookie and carry this secret's signature, so neither a forged form nor a
    cookie planted by a sibling domain passes."""

    COOKIE = "durable_csrf"
    FIELD = "csrf"

    def __init__(self, secret: bytes | None = None):
        env_secret = os.environ.get("DURABLE_DASHBOARD_SECRET")
        self._secret = secret or (env_secret.encode() if env_secret else secrets.token_bytes(32))

    def new_token(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        nonce, _, signature = (token or "").partition(".")
        return bool(nonce) and hmac.compare_digest(self._sign(nonce), signature)

    def check(self, cookie: str | None, submitted: str | None) -> bool:
        return self.valid(cookie) and hmac.compare_digest((cookie or "").encode(), (submitted or "").encode())

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]
