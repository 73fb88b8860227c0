"""A tiny web app that enqueues workflows by name; it never imports them.

    python -m examples.webapp.app --port 8000
    curl -X POST localhost:8000/orders -H 'Content-Type: application/json' \\
         -d '{"order_id": "o-1", "total": 10.5}'
    curl localhost:8000/orders/order-o-1

The order ID is the deduplication key: posting the same order twice while
its workflow runs returns the running workflow instead of charging twice.

It listens on 127.0.0.1 unless told otherwise. Set EXAMPLE_WEBAPP_TOKEN (or
--token) and every request must carry `Authorization: Bearer <token>`;
listening on another address without a token needs --no-auth, said out
loud. Requests are checked before anything is enqueued: a JSON body
(Content-Type application/json, which a cross-site form cannot send) of at
most MAX_BODY_BYTES holding exactly an order ID and a positive total.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import math
import os
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from durable import DurableClient
from durable.errors import DatabaseUnavailableError, DurableError, WorkflowNotFoundError

MAX_BODY_BYTES = 16 * 1024
MAX_TOTAL = 1_000_000_000
ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
WORKFLOW_ID = re.compile(r"order-[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def parse_order(content_type: str | None, content_length: str | None, read: Any) -> tuple[str, float]:
    """The order in a request, or BadRequest. `read(n)` reads n bytes of
    the body; nothing is read before its declared length is checked."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
    if content_length is None:
        raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
    if not content_length.strip().isdigit():
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length {content_length[:40]!r}")
    length = int(content_length)
    if length > MAX_BODY_BYTES:
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    raw = read(length)
    if len(raw) != length:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != {"order_id", "total"}:
        raise BadRequest(HTTPStatus.BAD_REQUEST, 'expected {"order_id": "...", "total": <number>} and nothing else')
    order_id, total = body["order_id"], body["total"]
    if not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "order_id: 1-100 letters, digits, '.', '_' or '-'")
    if (isinstance(total, bool) or not isinstance(total, (int, float)) or not math.isfinite(total)
            or not 0 < total <= MAX_TOTAL):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"total: a number > 0 and <= {MAX_TOTAL}")
    return order_id, float(total)


class Handler(BaseHTTPRequestHandler):
    client: DurableClient  # set on the subclass make_server builds
    token: str | None = None
    timeout = 10  # seconds a slow client may take to send its request

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/orders":
            return self._reply(HTTPStatus.NOT_FOUND, {"error": "POST /orders"})
        try:
            order_id, total = parse_order(
                self.headers.get("Content-Type"), self.headers.get("Content-Length"), self.rfile.read
            )
        except BadRequest as exc:
            self.close_connection = True  # an unread body must not be taken for the next request
            return self._reply(exc.status, {"error": str(exc)})
        try:
            handle = self.client.enqueue(
                "process_order", args=[order_id, total],
                workflow_id=f"order-{order_id}", dedup_key=order_id, on_duplicate="return_existing",
            )
        except DatabaseUnavailableError as exc:
            return self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except DurableError as exc:
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        self._reply(HTTPStatus.ACCEPTED, {"workflow_id": handle.workflow_id})

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if not self.path.startswith("/orders/"):
            return self._reply(HTTPStatus.NOT_FOUND, {"error": "GET /orders/<workflow_id>"})
        workflow_id = unquote(self.path[len("/orders/"):])
        if not WORKFLOW_ID.fullmatch(workflow_id):
            return self._reply(HTTPStatus.NOT_FOUND, {"error": "no such order"})
        try:
            w = self.client.get(workflow_id, with_payloads=True)
        except WorkflowNotFoundError:
            return self._reply(HTTPStatus.NOT_FOUND, {"error": "no such order"})
        except DurableError as exc:
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        self._reply(HTTPStatus.OK, {
            "workflow_id": w.workflow_id, "status": w.status.value, "output": w.output,
            "error": f"{w.error.type}: {w.error.message}" if w.error else None,
        })

    def _authorized(self) -> bool:
        if self.token is None:
            return True
        given = self.headers.get("Authorization") or ""
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return True
        self.close_connection = True
        self._reply(HTTPStatus.UNAUTHORIZED, {"error": "Authorization: Bearer <token> required"})
        return False

    def _reply(self, code: HTTPStatus, value: Any) -> None:
        data = json.dumps(value, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, allow_no_auth: bool) -> None:
    if not token and not is_loopback(host) and not allow_no_auth:
        raise ValueError(
            f"refusing to listen on {host} without authentication: set EXAMPLE_WEBAPP_TOKEN "
            "(or --token), or pass --no-auth when something else guards the port"
        )


def make_server(
    client: DurableClient, host: str = "127.0.0.1", port: int = 8000,
    token: str | None = None, allow_no_auth: bool = False,
) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: any free port). Without a token
    it listens on a loopback address only, unless `allow_no_auth`."""
    check_exposure(host, token, allow_no_auth)
    handler = type("WebAppHandler", (Handler,), {"client": client, "token": token or None})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("EXAMPLE_WEBAPP_TOKEN") or None,
                        help="require Authorization: Bearer <token> (default: $EXAMPLE_WEBAPP_TOKEN)")
    parser.add_argument("--no-auth", action="store_true",
                        help="allow a non-loopback --host without a token")
    args = parser.parse_args(argv)
    try:
        check_exposure(args.host, args.token, args.no_auth)
    except ValueError as exc:
        parser.error(str(exc))
    client = DurableClient()  # DURABLE_DATABASE_URL, DURABLE_BROKER_URL from the environment
    server = make_server(client, args.host, args.port, args.token, args.no_auth)
    print(f"example web app on http://{args.host}:{server.server_address[1]}/orders", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
