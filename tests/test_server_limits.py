"""The HTTP layer's limits, through a real `spangate serve`: header size and count, head and body
deadlines, the connection cap, WebSocket upgrades and X-Forwarded-For (gateway.http_protocol,
gateway.server)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from served import Served, served, start_served
from uvicorn.server import ServerState

from gateway.server import PIPELINE_DEPTH, GatewayHttpProtocol, server_config
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _connect(server: Served, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _rss_kib(server: Served) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def serve(demo_database: str, idp: Any, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """A server of its own, with the given settings (`max_headers="10"`: SPANGATE_MAX_HEADERS)."""
    started: list[Served] = []

    def start(**settings: str) -> Served:
        server = start_served(
            tmp_path,
            database=demo_database,
            issuer=idp.issuer,
            audit_key="server-limits-test-key",  # the example policy redacts
            env={f"SPANGATE_{k.upper()}": v for k, v in settings.items()},
        )
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def server(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server for the module: default limits, short deadlines (generous for a loaded CI)."""
    with served(
        tmp_path_factory.mktemp("limits"),
        database=demo_database,
        issuer=idp.issuer,
        audit_key="server-limits-test-key",
        env={
            "SPANGATE_HEADER_TIMEOUT_SECONDS": "3",
            "SPANGATE_BODY_TIMEOUT_SECONDS": "3",
            "SPANGATE_KEEPALIVE_TIMEOUT_SECONDS": "2",
        },
    ) as server:
        yield server


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


def _read_to_end(sock: socket.socket, timeout: float = 30.0) -> tuple[bytes, str]:
    """What the server sends, and how the read ended: "eof" (a FIN), "reset" or "timeout"."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, "timeout"
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


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


def _wait_healthy(server: Served, failure: str, seconds: float = 20) -> None:
    """Until /healthz answers 200 (new connections are served again), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(server.base + "/healthz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def test_two_megabytes_of_headers_get_431_and_are_not_read(server: Served) -> None:
    before = _rss_kib(server)
    for _ in range(3):
        with _connect(server) as sock:
            head = b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\nX-Big: "
            chunks = iter([head, *([b"a" * 16384] * 128)])  # 2 MiB in one header value
            _send_until_answered(sock, chunks)
            raw = _read_all(sock)
        _problem(raw, 431, "headers-too-large")
    # Nothing of the refused heads stays: far less than the 2 MiB x 3 sent (and its copies).
    assert _rss_kib(server) - before < 8 * 1024
    assert httpx.get(server.base + "/healthz").status_code == 200
    assert all(e["httpRequest"]["status"] != 431 for e in server.events())  # never reached it


def test_many_small_headers_get_431(server: Served) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    with _connect(server) as sock:
        sock.sendall(b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        raw = _read_all(sock)
    problem = _problem(raw, 431, "headers-too-large")
    assert "100 header fields" in problem["detail"]


def test_header_limits_are_settings(serve: Callable[..., Served]) -> None:
    server = serve(max_headers="10", max_header_bytes="4096")
    with _connect(server) as sock:
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(12))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        _problem(_read_all(sock), 431, "headers-too-large")
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 5000 + b"\r\n\r\n")
        _problem(_read_all(sock), 431, "headers-too-large")
    # Within the limits: answered.
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 3000 + b"\r\n\r\n")
        assert _read_all(sock, timeout=5).startswith(b"HTTP/1.1 200 ")
    # A head that begins in the same read as the end of the request before it is counted from
    # that read: 3,900 bytes of it, then 1,000 more, make a head over 4096 bytes: 431 at once
    # (not after a second 4096 bytes, nor at the head deadline).
    with _connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 3900
        )
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"a" * 1000)
        started = time.monotonic()
        raw, end = _read_to_end(sock, timeout=30)
    assert end == "eof" and time.monotonic() - started < 8  # the head deadline is 10 s
    _problem(raw, 431, "headers-too-large")


def test_what_is_not_http_gets_a_problem_too(server: Served) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n")
        _problem(_read_all(sock), 400, "request-invalid")


# -- item 3: slow clients ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [b"GET /v1/ord", b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\nAuthorization: Bea"],
    ids=["request-line", "headers"],
)
def test_a_head_that_never_ends_gets_408(server: Served, partial: bytes) -> None:
    events = len(server.events())
    with _connect(server) as sock:
        sock.sendall(partial)
        started = time.monotonic()
        raw = _read_all(sock, timeout=30)
        waited = time.monotonic() - started
    _problem(raw, 408, "request-timeout")
    assert waited < 20  # the deadline is 3 s; anything under the read timeout shows it held
    assert len(server.events()) == events  # no request reached the gateway: no event


def test_a_connection_that_sends_nothing_is_closed(server: Served) -> None:
    with _connect(server) as sock:
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
    with _connect(server) as sock:
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
    with _connect(server) as sock:
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


def _chunked_post(token: str, rid: str) -> bytes:
    return (
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nX-Request-ID: " + rid.encode() + b"\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )


def test_a_broken_chunked_body_is_refused_at_once(
    serve: Callable[..., Served], token_for: Callable[..., str]
) -> None:
    """Body framing is bounded and checked as it arrives, not at the body deadline (60 s here):
    a trailer field that never ends gets 431 once it passes SPANGATE_MAX_HEADER_BYTES, and
    bytes that are not chunked framing get 400 at once; the request leaves its event."""
    server = serve(body_timeout_seconds="60", max_header_bytes="8192")
    token = token_for("order-writer")

    rid = "trailer-" + secrets.token_hex(6)
    with _connect(server) as sock:
        sock.sendall(_chunked_post(token, rid) + b'2\r\n{"\r\n0\r\nX-T: ')
        started = time.monotonic()
        sent = _send_until_answered(sock, iter([b"a" * 4096] * 4096))  # up to 16 MiB
        raw, end = _read_to_end(sock, timeout=30)
        waited = time.monotonic() - started
    problem = _problem(raw, 431, "headers-too-large")
    assert "trailer" in problem["detail"]
    assert end == "eof" and waited < 30
    assert sent < 16 * 1024 * 1024

    rid = "bad-chunk-" + secrets.token_hex(6)
    with _connect(server) as sock:
        sock.sendall(_chunked_post(token, rid) + b'2\r\n{"\r\nzz\r\n')
        started = time.monotonic()
        raw, end = _read_to_end(sock, timeout=45)
        waited = time.monotonic() - started
    _problem(raw, 400, "request-invalid")
    assert end == "eof" and waited < 20, (end, waited)
    deadline = time.monotonic() + 10
    while not server.events(rid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(server.events(rid)) == 1  # the gateway saw the request end, and audited it


def test_a_client_still_sending_after_the_body_deadline_reads_its_408(
    server: Served, token_for: Callable[..., str]
) -> None:
    """The 408 closes with a FIN and the server drops what still arrives for a moment, so the
    client's own sends do not make the server's TCP stack reset the connection (a reset may
    discard the answer before the client reads it)."""
    token = token_for("order-writer")
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n{"
        )
        answered: float | None = None
        deadline = time.monotonic() + 30
        failed = None
        # Keep sending past the 3 s body deadline, and for half a second after the answer.
        while time.monotonic() < deadline:
            if answered is None and select.select([sock], [], [], 0)[0]:
                answered = time.monotonic()
            if answered is not None and time.monotonic() - answered > 0.5:
                break
            try:
                sock.sendall(b" " * 100)
            except OSError as exc:  # a reset: the server closed without lingering
                failed = exc
                break
            time.sleep(0.02)
        raw, end = _read_to_end(sock, timeout=10)
    assert failed is None, failed
    assert end == "eof", end
    _problem(raw, 408, "request-timeout")


@pytest.mark.parametrize("path", ["/healthz", "/v1/orders"])
def test_an_answer_before_the_body_ended_closes_the_connection(server: Served, path: str) -> None:
    with _connect(server) as sock:
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


def _body_in_progress(server: Served, token: str) -> socket.socket:
    """A connection whose request is in progress: the gateway waits for the rest of its body."""
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    answer = b""
    while b"\r\n\r\n" not in answer:  # 100 Continue: the gateway is reading the body
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 100 "), answer
    sock.sendall(b"{")
    return sock


def test_the_connection_cap_limits_connections_not_requests(
    serve: Callable[..., Served], token_for: Callable[..., str]
) -> None:
    server = serve(max_connections="4", header_timeout_seconds="60", body_timeout_seconds="60")
    # Idle connections and heads in progress are closed to make room: a request still gets in.
    idle = [_connect(server) for _ in range(2)]
    heads = [_connect(server) for _ in range(2)]
    for sock in heads:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(0.5)
    kept: list[socket.socket] = []
    try:
        for _ in range(4):  # each stays open (kept alive): the next needs room again
            sock = _connect(server)
            kept.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while b"}" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer
        for sock in idle:  # the longest idle went first
            _, end = _read_to_end(sock, timeout=5)
            assert end in ("eof", "reset"), end
    finally:
        for sock in idle + heads + kept:
            sock.close()

    # Four requests in progress: nothing may be closed, so a new connection is refused at once,
    # not held until its head deadline (60 s), and the warning is not repeated per connection.
    token = token_for("order-writer")
    busy = [_body_in_progress(server, token) for _ in range(4)]
    try:
        time.sleep(0.5)
        for _ in range(20):
            with _connect(server) as sock:
                started = time.monotonic()
                raw, end = _read_to_end(sock, timeout=30)
                assert end in ("eof", "reset") and time.monotonic() - started < 15
                if raw:
                    _problem(raw, 503, "server-busy")
        warnings = server.log.read_text().count("SPANGATE_MAX_CONNECTIONS")
        assert 1 <= warnings <= 4, server.log.read_text()  # at most one per 10 s
    finally:
        for sock in busy:
            sock.close()
    _wait_healthy(server, "the gateway did not recover from the cap")


def test_connections_per_address_are_limited_when_configured(
    serve: Callable[..., Served],
) -> None:
    server = serve(max_connections_per_ip="2", header_timeout_seconds="60")
    held = [_connect(server) for _ in range(2)]
    try:
        time.sleep(0.3)
        with _connect(server) as sock:
            raw, end = _read_to_end(sock, timeout=30)
        assert end in ("eof", "reset")
        if raw:
            problem = _problem(raw, 503, "server-busy")
            assert "your address" in problem["detail"]
    finally:
        held.pop().close()
    try:
        # one slot is free again once the server saw the close
        _wait_healthy(server, "the freed slot was not reused")
    finally:
        for sock in held:
            sock.close()


def test_an_idle_keep_alive_connection_is_closed(server: Served) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        raw, end = _read_to_end(sock, timeout=30)
        waited = time.monotonic() - started
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert end == "eof", end  # closed by the server (keep-alive timeout 2 s), not our timeout
    assert waited < 20


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
    many = 40  # well past the pipelining depth: what is held back is parsed as answers drain
    with _connect(server) as sock:
        # In one write: a POST, many GETs, and the start of one more head that never ends; it
        # gets its own deadline (3 s), armed from its first byte, not the keep-alive timeout.
        sock.sendall(post + get * many + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        raw, end = _read_to_end(sock, timeout=60)
    assert end == "eof", end
    assert raw.count(b"HTTP/1.1 200 ") == many + 1, raw[:2000]
    assert b"commit_timestamp" in raw.split(b"HTTP/1.1 200 ")[1]  # the POST's answer came first
    _problem(b"HTTP/1.1 408 " + raw.split(b"HTTP/1.1 408 ", 1)[1], 408, "request-timeout")


def test_a_bad_request_behind_a_pipelined_one_is_answered_after_it(
    server: Served, token_for: Callable[..., str]
) -> None:
    """A write in progress, and behind it (same write) a request the server refuses: the write
    is answered and audited, then the refusal, then the connection closes."""
    token = token_for("order-writer").encode()
    body = b'{"order_id": "O-%d", "customer_id": "C-1", "total_cents": 5}' % (
        time.time_ns() % 10**12
    )
    post = (
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    with _connect(server) as sock:
        sock.sendall(post + b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, end = _read_to_end(sock, timeout=30)
    assert end == "eof", end
    first, _, rest = raw.partition(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 200 ") and b"commit_timestamp" in first, raw[:1000]
    _problem(b"HTTP/1.1 400 " + rest, 400, "request-invalid")


async def test_the_pipeline_is_parsed_no_deeper_than_its_depth() -> None:
    """A real server socket with GatewayHttpProtocol, and an application that does not answer:
    of 20,000 pipelined requests in one connection, only a handful are parsed and queued; the
    rest stays unparsed (at most one read) until answers drain."""
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    settings = Settings(policy=REPO / "policy.example.yaml")
    config = server_config(app, settings, log_level="warning")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: GatewayHttpProtocol(config, state, {}), "127.0.0.1", 0
    )
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request * 20_000)  # 540 KB
        deadline = loop.time() + 30
        while True:
            protocol = next(iter(state.connections), None)
            if isinstance(protocol, GatewayHttpProtocol) and protocol._held:
                break
            assert loop.time() < deadline, "the server never held anything back"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # what it would parse further, it would parse now
        assert len(state.connections) == 1
        assert len(protocol.pipeline) <= PIPELINE_DEPTH + 512 // len(request) + 1
        assert len(protocol._held) <= 1024 * 1024
        release.set()
        answers = b""
        while answers.count(b"HTTP/1.1 204 ") < 20_000:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=60)
            assert chunk
            answers += chunk
        writer.close()
    finally:
        listener.close()
        for connection in list(state.connections):
            connection.transport.close()
        await listener.wait_closed()


def test_pipelined_requests_cannot_queue_without_limit(server: Served) -> None:
    """Ten megabytes of pipelined GETs on one connection that never reads its answers: the
    server stops reading (its memory stays flat) and keeps answering everyone else."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    payload = request * (10 * 1024 * 1024 // len(request))
    before = _rss_kib(server)
    with _connect(server) as sock:
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 8
        while sent < len(payload) and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], 0.2)
            if writable:
                try:
                    sent += sock.send(payload[sent : sent + 262144])
                except BlockingIOError:
                    pass
            if sent > len(payload) // 2 or time.monotonic() > deadline - 4:
                assert httpx.get(server.base + "/healthz", timeout=10).status_code == 200
        time.sleep(1)
        grown = _rss_kib(server) - before
        assert httpx.get(server.base + "/healthz", timeout=10).status_code == 200
    assert grown < 64 * 1024, f"the server grew by {grown} KiB"


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
    with _connect(server) as sock:
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
    assert config.log_config is None  # uvicorn logs through gateway.logs (one format)
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


# -- refusals by the server: a log line each (rate-limited) and a count --------------------------


def _metric(server: Served, sample: str) -> float:
    text = httpx.get(server.base + "/metrics", timeout=30).text
    (line,) = [x for x in text.splitlines() if x.startswith(sample + " ")]
    return float(line.split()[-1])


def test_each_refusal_by_the_server_is_a_log_line_and_counted(
    serve: Callable[..., Served],
) -> None:
    server = serve(header_timeout_seconds="2", max_connections_per_ip="2")
    answers: dict[str, dict[str, Any]] = {}
    with _connect(server) as sock:  # 431
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        sock.sendall(b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        answers["headers-too-large"] = _problem(_read_all(sock), 431, "headers-too-large")
    with _connect(server) as sock:  # 400
        sock.sendall(b"GET /v1/orders/O-1001 HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n")
        answers["request-invalid"] = _problem(_read_all(sock), 400, "request-invalid")
    with _connect(server) as sock:  # 408
        sock.sendall(b"GET /v1/orders/O-secret HTTP/1.1\r\nHost: x\r\nX-A: b")
        answers["request-timeout"] = _problem(_read_all(sock), 408, "request-timeout")
    held = [_connect(server) for _ in range(2)]  # 503: a third connection from this address
    try:
        time.sleep(0.3)
        with _connect(server) as sock:
            _, end = _read_to_end(sock, timeout=30)
        assert end in ("eof", "reset")
    finally:
        for sock in held:
            sock.close()
    _wait_healthy(server, "the connections held were not released")
    for code, problem in answers.items():
        rid = problem["request_id"]
        log = server.log_with(rid)
        (line,) = [json.loads(x) for x in log.splitlines() if rid in x]
        assert line["logger"] == "spangate.access"
        assert (line["request_id"], line["status"], line["code"]) == (rid, problem["status"], code)
        assert line["severity"] == "WARNING" and line["client"] == "127.0.0.1"
        assert line["path"] is None and line["route"] is None and line["user_agent"] is None
    assert "O-secret" not in server.log.read_text()
    for code in answers:
        assert _metric(server, f'spangate_server_refusals_total{{code="{code}"}}') == 1.0
    assert _metric(server, 'spangate_server_refusals_total{code="server-busy"}') == 1.0
    assert all(e["httpRequest"]["status"] in (200, 404) for e in server.events())  # no events


def test_refusal_lines_are_rate_limited_and_counted_whatever_the_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.errors import HeadersTooLarge
    from gateway.logs import REQUEST_EXTRA
    from gateway.refusals import LINES_PER_SECOND, ServerRefusals

    now = [100.0]
    refusals = ServerRefusals(clock=lambda: now[0])
    caplog.set_level(logging.INFO, "spangate.access")
    error = HeadersTooLarge("the request has more than 100 header fields")
    for i in range(LINES_PER_SECOND + 5):  # in one second: 5 too many
        refusals.note(error, f"r{i}", "198.51.100.1")
    now[0] += 1.0
    refusals.note(error, "later", "198.51.100.1")
    lines = [r for r in caplog.records if r.name == "spangate.access"]
    assert [getattr(r, REQUEST_EXTRA)["request_id"] for r in lines] == [
        *(f"r{i}" for i in range(LINES_PER_SECOND)),
        "later",
    ]
    assert "5 earlier refusal(s) not logged" in lines[-1].getMessage()
    assert refusals.counts == {"headers-too-large": LINES_PER_SECOND + 6}
