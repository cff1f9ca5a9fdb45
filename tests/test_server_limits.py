"""The HTTP layer's limits, through a real `spangate serve`: header size and count, head and body
deadlines, the connection cap, WebSocket upgrades and X-Forwarded-For (gateway.server)."""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.dev.ports import free_port
from gateway.server import GatewayHttpProtocol, server_config
from gateway.settings import Settings

SPANGATE = [sys.executable, "-m", "gateway"]
REPO = Path(__file__).resolve().parents[1]


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int, audit: Path) -> None:
        self.process = process
        self.port = port
        self.audit = audit
        self.base = f"http://127.0.0.1:{port}"

    def connect(self, timeout: float = 30.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def events(self, needle: str) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if needle in line]


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else None
            raise AssertionError(f"the server exited: {out}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def _starter(
    demo_database: str, idp: Any, folder: Path, started: list[subprocess.Popen[str]]
) -> Callable[..., Served]:
    def start(**settings: str) -> Served:
        port = free_port()
        audit = folder / f"audit-{port}.jsonl"
        env = {
            **os.environ,
            "SPANNER_EMULATOR_HOST": demo_database,
            "OKTA_ISSUER": idp.issuer,
            "SPANGATE_AUDIT_PATH": str(audit),
            "SPANGATE_AUDIT_KEY": "server-limits-test-key",  # the example policy redacts
            "SPANGATE_LOG_LEVEL": "warning",
            **{f"SPANGATE_{k.upper()}": v for k, v in settings.items()},
        }
        policy = str(REPO / "policy.example.yaml")
        process = subprocess.Popen(
            [*SPANGATE, "serve", "--policy", policy, "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
        return Served(process, port, audit)

    return start


def _stop_all(started: list[subprocess.Popen[str]]) -> None:
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def serve(demo_database: str, idp: Any, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """A server of its own, with the given settings (`max_headers="10"`: SPANGATE_MAX_HEADERS)."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield _starter(demo_database, idp, tmp_path, started)
    finally:
        _stop_all(started)


@pytest.fixture(scope="module")
def server(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server for the module: default limits, short deadlines (generous for a loaded CI)."""
    started: list[subprocess.Popen[str]] = []
    try:
        start = _starter(demo_database, idp, tmp_path_factory.mktemp("limits"), started)
        yield start(
            header_timeout_seconds="3", body_timeout_seconds="3", keepalive_timeout_seconds="2"
        )
    finally:
        _stop_all(started)


def _read_all(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything the server sends until it closes (or `timeout`: then what came so far)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> int:
    """Send chunks until the server answers (or closes); the number of bytes sent."""
    sent = 0
    for chunk in chunks:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def _problem(raw: bytes, status: int, code: str) -> dict[str, Any]:
    got, headers, body = _status_and_body(raw)
    assert got == status, raw[:500]
    assert headers["content-type"] == "application/problem+json"
    assert headers.get("connection") == "close"
    problem: dict[str, Any] = json.loads(body)
    assert problem["code"] == code and problem["status"] == status
    return problem


# -- item 2: headers with limits ----------------------------------------------------------------


def test_two_megabytes_of_headers_get_431_and_are_not_read(server: Served) -> None:
    before = server.rss_kib()
    for _ in range(3):
        with server.connect() as sock:
            head = b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\nX-Big: "
            chunks = iter([head, *([b"a" * 16384] * 128)])  # 2 MiB in one header value
            _send_until_answered(sock, chunks)
            raw = _read_all(sock)
        _problem(raw, 431, "headers-too-large")
    # Nothing of the refused heads stays: far less than the 2 MiB x 3 sent (and its copies).
    assert server.rss_kib() - before < 8 * 1024
    assert httpx.get(server.base + "/healthz").status_code == 200
    assert all(e["httpRequest"]["status"] != 431 for e in server.events(""))  # never reached it


def test_many_small_headers_get_431(server: Served) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    with server.connect() as sock:
        sock.sendall(b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        raw = _read_all(sock)
    problem = _problem(raw, 431, "headers-too-large")
    assert "100 header fields" in problem["detail"]


def test_header_limits_are_settings(serve: Callable[..., Served]) -> None:
    server = serve(max_headers="10", max_header_bytes="4096")
    with server.connect() as sock:
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(12))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        _problem(_read_all(sock), 431, "headers-too-large")
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 5000 + b"\r\n\r\n")
        _problem(_read_all(sock), 431, "headers-too-large")
    # Within the limits: answered.
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 3000 + b"\r\n\r\n")
        assert _read_all(sock, timeout=5).startswith(b"HTTP/1.1 200 ")


def test_what_is_not_http_gets_a_problem_too(server: Served) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n")
        _problem(_read_all(sock), 400, "request-invalid")


# -- item 3: slow clients ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [b"GET /v1/ord", b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\nAuthorization: Bea"],
    ids=["request-line", "headers"],
)
def test_a_head_that_never_ends_gets_408(server: Served, partial: bytes) -> None:
    events = len(server.events(""))
    with server.connect() as sock:
        sock.sendall(partial)
        started = time.monotonic()
        raw = _read_all(sock, timeout=30)
        waited = time.monotonic() - started
    _problem(raw, 408, "request-timeout")
    assert waited < 20  # the deadline is 3 s; anything under the read timeout shows it held
    assert len(server.events("")) == events  # no request reached the gateway: no event


def test_a_connection_that_sends_nothing_is_closed(server: Served) -> None:
    with server.connect() as sock:
        assert _read_all(sock, timeout=30) == b""
        sock.settimeout(0.5)
        try:  # closed, not merely quiet: the read above ended on EOF, not on its timeout
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass


def test_a_body_that_never_ends_gets_408_and_one_event(
    server: Served, token_for: Callable[..., str]
) -> None:
    rid = "slow-body-" + secrets.token_hex(6)
    token = token_for("order-writer")
    with server.connect() as sock:
        sock.sendall(
            b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
            b"X-Request-ID: " + rid.encode() + b'\r\n\r\n{"order_id": '
        )
        raw = _read_all(sock, timeout=30)
    problem = _problem(raw, 408, "request-timeout")
    assert problem["request_id"] == rid
    deadline = time.monotonic() + 10
    while not server.events(rid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (event,) = server.events(rid)
    assert event["httpRequest"]["status"] == 408
    assert event["protoPayload"]["status"] == {"code": 4, "message": "request-timeout"}


def test_a_chunked_body_that_never_ends_gets_408(
    server: Served, token_for: Callable[..., str]
) -> None:
    token = token_for("order-writer")
    with server.connect() as sock:
        sock.sendall(
            b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
            b'2\r\n{"\r\n'
        )
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # trickle: each chunk arrives well within any gap
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                break
            sock.sendall(b"1\r\n \r\n")
        raw = _read_all(sock, timeout=30)
    _problem(raw, 408, "request-timeout")


@pytest.mark.parametrize("path", ["/healthz", "/v1/orders"])
def test_an_answer_before_the_body_ended_closes_the_connection(server: Served, path: str) -> None:
    with server.connect() as sock:
        # /healthz takes no POST (405); /v1/orders without a token is a 401 before the body.
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{".encode()
        )
        raw = b""
        closed = False
        deadline = time.monotonic() + 20
        while not closed and time.monotonic() < deadline:
            # The body trickles on after the answer (which keeps the keep-alive timer off).
            readable, _, _ = select.select([sock], [], [], 0.2)
            try:
                if readable:
                    chunk = sock.recv(65536)
                    closed = not chunk
                    raw += chunk
                else:
                    sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    assert closed, "the connection stayed open while the body trickled on"
    status, _, _ = _status_and_body(raw)
    assert status in (401, 405)


def test_the_connection_cap_answers_503_and_recovers(serve: Callable[..., Served]) -> None:
    server = serve(max_connections="3", header_timeout_seconds="60")
    held = [server.connect() for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head in progress holds its connection
        deadline = time.monotonic() + 20
        while True:
            response = httpx.get(server.base + "/healthz", timeout=10)
            if response.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "server-busy"
        assert response.headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 20
    while httpx.get(server.base + "/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover from the cap"
        time.sleep(0.1)


def test_an_idle_keep_alive_connection_is_closed(server: Served) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _read_all(sock, timeout=30)
    assert raw.startswith(b"HTTP/1.1 200 ")  # then EOF: _read_all ended before its timeout


def test_keep_alive_and_pipelining_still_work_within_the_limits(
    server: Served, token_for: Callable[..., str]
) -> None:
    token = token_for("order-writer").encode()
    body = b'{"order_id": "O-%d", "customer_id": "C-1", "total_cents": 5}' % (
        time.time_ns() % 10**12
    )
    post = (
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(post + get + get)  # three requests in one write
        raw = b""
        while raw.count(b"HTTP/1.1 200 ") < 3:
            chunk = sock.recv(65536)
            assert chunk, raw.decode()
            raw += chunk
        assert b"commit_timestamp" in raw
        # The same connection: a later head gets its own deadline, not the first one's.
        time.sleep(1)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        _problem(_read_all(sock, timeout=30), 408, "request-timeout")


# -- settings bounds (issue 13 review, item 7) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("header_timeout_seconds", "inf"),
        ("header_timeout_seconds", "nan"),
        ("header_timeout_seconds", "601"),
        ("body_timeout_seconds", "1e300"),
        ("body_timeout_seconds", "-inf"),
        ("http_timeout_seconds", "inf"),
        ("jwks_min_refetch_seconds", "nan"),
        ("jwks_retry_max_seconds", "nan"),
        ("introspection_rate", "inf"),
        ("introspection_cache_seconds", "nan"),
        ("idempotency_ttl_seconds", "nan"),
        ("audit_batch_window_ms", "nan"),
        ("max_headers", "7"),
    ],
)
def test_a_setting_cannot_disable_its_own_bound(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"SPANGATE_{name.upper()}", value)
    with pytest.raises(ValidationError):
        Settings()


# -- item 15: WebSocket upgrades -----------------------------------------------------------------


def test_a_websocket_upgrade_to_a_policy_route_is_plain_http_and_audited(
    server: Served,
) -> None:
    rid = "upgrade-" + secrets.token_hex(6)
    with server.connect() as sock:
        sock.sendall(
            b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"X-Request-ID: " + rid.encode() + b"\r\n\r\n"
        )
        raw = _read_all(sock, timeout=30)
    status, _, body = _status_and_body(raw)
    assert status == 401, raw[:300]
    assert json.loads(body)["code"] == "token-missing"
    deadline = time.monotonic() + 10
    while not server.events(rid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (event,) = server.events(rid)
    assert event["httpRequest"]["status"] == 401


async def test_the_app_refuses_a_websocket_scope_without_a_500(gateway: Any) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/orders/O-1001", "headers": []}
    await gateway(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


# -- item 20: one server configuration ----------------------------------------------------------


def test_one_server_configuration_trusts_no_forwarding_header() -> None:
    settings = Settings(
        policy=REPO / "policy.example.yaml",
        max_header_bytes=8192,
        max_connections=7,
        keepalive_timeout_seconds=3,
    )
    config = server_config(object(), settings, log_level="warning")
    assert config.proxy_headers is False
    assert config.http is GatewayHttpProtocol
    assert config.ws == "none"
    assert config.server_header is False and config.access_log is False
    assert config.timeout_keep_alive == 3
    assert config.limits.max_header_bytes == 8192 and config.limits.max_connections == 7
    assert config.h11_max_incomplete_event_size == 8192
    # `spangate dev` runs it too: test_server.py checks X-Forwarded-For through the demo.


def test_serve_ignores_a_forwarded_for_header_from_loopback(server: Served) -> None:
    rid = "xff-" + secrets.token_hex(6)
    response = httpx.get(
        server.base + "/v1/orders/O-1001",
        headers={"X-Forwarded-For": "203.0.113.66", "X-Request-ID": rid},
    )
    assert response.status_code == 401
    (event,) = server.events(rid)
    assert event["httpRequest"]["remoteIp"] == "127.0.0.1"
