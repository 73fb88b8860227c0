"""The example web app (issue 15, item 14): loopback by default, an
optional bearer token, and every request checked (size, content type, JSON
shape) before anything is enqueued. A real server on the embedded default
(SQLite, filesystem broker); no worker needed."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from durable import DurableClient, Settings
from examples.webapp import app as webapp


@pytest.fixture
def client(tmp_path: Path) -> DurableClient:
    home = tmp_path / "home"
    return DurableClient(settings=Settings(home=str(home), database_url=f"sqlite:///{home / 'd.sqlite3'}"))


def _serve(client: DurableClient, **kwargs: Any) -> Iterator[tuple[str, int]]:
    server = webapp.make_server(client, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield str(server.server_address[0]), int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(client: DurableClient) -> Iterator[tuple[str, int]]:
    yield from _serve(client)


def request(address: tuple[str, int], method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}


def post(address: tuple[str, int], value: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return request(address, "POST", "/orders", json.dumps(value).encode(), {**JSON, **(headers or {})})


def test_listens_on_loopback_by_default(client: DurableClient) -> None:
    server = webapp.make_server(client, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    with pytest.raises(SystemExit) as refused:  # the command line says why, before connecting anything
        webapp.main(["--host", "0.0.0.0", "--port", "0"])
    assert refused.value.code == 2
    with pytest.raises(ValueError, match="without authentication"):
        webapp.make_server(client, host="0.0.0.0", port=0)
    for host, kwargs in (("0.0.0.0", {"token": "s3cret"}), ("0.0.0.0", {"allow_no_auth": True})):
        webapp.make_server(client, host=host, port=0, **kwargs).server_close()


def test_a_good_order_is_enqueued_once(server: tuple[str, int], client: DurableClient) -> None:
    assert post(server, {"order_id": "o-1", "total": 10.5}) == (202, {"workflow_id": "order-o-1"})
    assert post(server, {"order_id": "o-1", "total": 10.5}) == (202, {"workflow_id": "order-o-1"})
    status, body = request(server, "GET", "/orders/order-o-1")
    assert status == 200 and body["status"] == "ENQUEUED"
    assert client.get("order-o-1").inputs == {"args": ["o-1", 10.5], "kwargs": {}}
    assert request(server, "GET", "/orders/order-nope")[0] == 404


@pytest.mark.parametrize("body", [
    [], "o-1", None, 3,
    {"order_id": "o-1"},
    {"total": 3},
    {"order_id": "o-1", "total": 3, "extra": 1},
    {"order_id": "", "total": 3},
    {"order_id": "a\nb", "total": 3},
    {"order_id": "x" * 101, "total": 3},
    {"order_id": 7, "total": 3},
    {"order_id": "o-1", "total": "3"},
    {"order_id": "o-1", "total": True},
    {"order_id": "o-1", "total": 0},
    {"order_id": "o-1", "total": -5},
    {"order_id": "o-1", "total": 1e300},
])
def test_a_bad_body_is_refused_and_nothing_is_enqueued(
    server: tuple[str, int], client: DurableClient, body: Any
) -> None:
    status, reply = post(server, body)
    assert status == 400 and reply["error"]
    assert client.list_workflows() == []


def test_bad_framing_is_refused_before_the_body_is_read(server: tuple[str, int], client: DurableClient) -> None:
    good = json.dumps({"order_id": "o-1", "total": 1}).encode()
    # not JSON, or not declared as JSON (a cross-site form posts text/plain)
    assert request(server, "POST", "/orders", b"{nope", JSON)[0] == 400
    assert request(server, "POST", "/orders", b"\xff\xfe", JSON)[0] == 400
    assert request(server, "POST", "/orders", good, {"Content-Type": "text/plain"})[0] == 415
    assert request(server, "POST", "/orders", good)[0] == 415
    # too large: refused from the header, the body never read
    big = json.dumps({"order_id": "o-1", "total": 1, "pad": "x" * webapp.MAX_BODY_BYTES}).encode()
    assert request(server, "POST", "/orders", big, JSON)[0] == 413
    assert client.list_workflows() == []


def _raw(address: tuple[str, int], head: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_huge_or_missing_content_length_is_refused_at_once(
    server: tuple[str, int], client: DurableClient
) -> None:
    # a declared 10 GB body: answered from the header, the connection closed
    reply = _raw(server, b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 10000000000\r\n\r\n{")
    assert reply.startswith(b"HTTP/1.0 413")
    reply = _raw(server, b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 411")
    for bad in (b"-1", b"abc", b"1e3"):
        reply = _raw(server, b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + bad + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 400"), (bad, reply)
    assert client.list_workflows() == []


def test_a_token_is_required_when_set(client: DurableClient) -> None:
    for address in _serve(client, token="s3cret"):
        order = {"order_id": "o-2", "total": 2}
        assert post(address, order)[0] == 401
        assert post(address, order, {"Authorization": "Bearer wrong"})[0] == 401
        assert request(address, "GET", "/orders/order-o-2")[0] == 401
        assert client.list_workflows() == []
        assert post(address, order, {"Authorization": "Bearer s3cret"})[0] == 202
        assert request(address, "GET", "/orders/order-o-2", headers={"Authorization": "Bearer s3cret"})[0] == 200
