"""A tiny web app that enqueues workflows by name; it never imports them.

    python -m examples.webapp.app --port 8000
    curl -X POST localhost:8000/orders -d '{"order_id": "o-1", "total": 10.5}'
    curl localhost:8000/orders/order-o-1

The order ID is the deduplication key: posting the same order twice while
its workflow runs returns the running workflow instead of charging twice.
"""

from __future__ import annotations

import argparse
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from durable import DurableClient
from durable.errors import DurableError, WorkflowNotFoundError

client = DurableClient()  # DURABLE_DATABASE_URL, DURABLE_BROKER_URL from the environment


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/orders":
            return self._reply(HTTPStatus.NOT_FOUND, {"error": "POST /orders"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            order_id, total = str(body["order_id"]), float(body["total"])
        except (ValueError, KeyError, TypeError) as exc:
            return self._reply(HTTPStatus.BAD_REQUEST, {"error": f"expected {{order_id, total}}: {exc}"})
        handle = client.enqueue(
            "process_order", args=[order_id, total],
            workflow_id=f"order-{order_id}", dedup_key=order_id, on_duplicate="return_existing",
        )
        self._reply(HTTPStatus.ACCEPTED, {"workflow_id": handle.workflow_id})

    def do_GET(self) -> None:  # noqa: N802
        if not self.path.startswith("/orders/"):
            return self._reply(HTTPStatus.NOT_FOUND, {"error": "GET /orders/<workflow_id>"})
        try:
            w = client.get(self.path[len("/orders/"):])
        except WorkflowNotFoundError as exc:
            return self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except DurableError as exc:
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        self._reply(HTTPStatus.OK, {
            "workflow_id": w.workflow_id, "status": w.status.value, "output": w.output,
            "error": f"{w.error.type}: {w.error.message}" if w.error else None,
        })

    def _reply(self, code: HTTPStatus, value: Any) -> None:
        data = json.dumps(value, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"example web app on http://{args.host}:{args.port}/orders", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
