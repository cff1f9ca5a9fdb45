"""The admin port (SPANGATE_ADMIN_PORT, gateway.admin), through a real ``spangate serve``: probes
and scrapes answer while the API port's connection cap refuses new connections, the API port no
longer serves /readyz and /metrics, the admin port nothing else, and it answers through the drain;
with ``--workers 2`` every worker serves it on the one inherited socket."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import EXAMPLE_POLICY, Served, served, start_served

from gateway.dev.idp import IdpProcess
from gateway.dev.ports import free_port
from gateway.dev.redis import RedisProcess

WAIT_SECONDS = 60  # bounds every wait below (a loaded machine), never asserted on


def _env(**settings: str) -> dict[str, str]:
    return {f"SPANGATE_{k.upper()}": v for k, v in settings.items()}


@pytest.fixture
def serve(
    demo_database: str, idp: IdpProcess, audit_key: str, tmp_path: Path
) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**settings: str) -> Served:
        server = start_served(
            tmp_path,
            database=demo_database,
            issuer=idp.issuer,
            audit_key=audit_key,
            env=_env(admin_port=str(free_port()), **settings),
        )
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _busy(server: Served, token: str) -> socket.socket:
    """A connection to the API port whose request is in progress (its body is awaited)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 100 "), answer
    sock.sendall(b"{")
    return sock


def _refused_at_the_cap(server: Served) -> bool:
    """A new connection to the API port gets 503 server-busy (or is closed without an answer)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(30)
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except ConnectionResetError:
            pass
    return raw == b"" or (raw.startswith(b"HTTP/1.1 503 ") and b"server-busy" in raw)


def test_probes_and_scrapes_answer_while_the_api_port_is_full(
    serve: Callable[..., Served], token_for: Callable[..., str]
) -> None:
    """Without the admin port a kubelet's probe is one more connection over the cap: refused at
    accept (503 server-busy), so a pod that is only busy fails its liveness probe."""
    server = serve(max_connections="3", header_timeout_seconds="60", body_timeout_seconds="60")
    admin = server.health_base
    token = token_for("order-writer")
    busy = [_busy(server, token) for _ in range(3)]
    try:
        time.sleep(0.3)
        assert _refused_at_the_cap(server)
        for _ in range(5):  # new connections each time, as a kubelet makes them
            assert httpx.get(f"{admin}/healthz", timeout=10).json() == {"status": "ok"}
            ready = httpx.get(f"{admin}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            metrics = httpx.get(f"{admin}/metrics", timeout=10)
            assert metrics.status_code == 200 and "\nspangate_ready 1.0\n" in metrics.text
        assert _refused_at_the_cap(server)  # still full: the admin port did not take its room
    finally:
        for sock in busy:
            sock.close()


def test_each_port_serves_its_own_paths(
    serve: Callable[..., Served], token_for: Callable[..., str]
) -> None:
    server = serve()
    api, admin = server.base, server.health_base
    assert admin != api
    token = {"Authorization": f"Bearer {token_for('support-console')}"}
    # The API port: the policy's routes, /healthz (a load balancer's health check), the docs;
    # /readyz and /metrics moved (a LoadBalancer Service no longer publishes them).
    assert httpx.get(f"{api}/v1/orders/O-1001", headers=token).status_code == 200
    assert httpx.get(f"{api}/healthz").status_code == 200
    assert httpx.get(f"{api}/openapi.json").status_code == 200
    for path in ("/readyz", "/metrics"):
        moved = httpx.get(f"{api}{path}")
        assert moved.status_code == 404, moved.text
        assert moved.headers["content-type"] == "application/problem+json"
        assert moved.json()["code"] == "no-route" and "SPANGATE_ADMIN_PORT" in moved.json()["detail"]
    # The admin port: health, readiness, metrics, and nothing else (no token is ever asked for).
    assert httpx.get(f"{admin}/readyz").json()["policy_sha256"]
    for path in ("/v1/orders/O-1001", "/docs", "/openapi.json", "/mcp"):
        other = httpx.get(f"{admin}{path}", headers=token)
        assert other.status_code == 404 and other.json()["code"] == "no-route", path
    # What the admin port answered is counted nowhere as a call: no audit event.
    assert not [e for e in server.events() if "readyz" in str(e)]


def test_the_admin_port_answers_through_the_drain(
    serve: Callable[..., Served],
) -> None:
    server = serve(drain_seconds="3")
    admin = server.health_base
    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        ready = httpx.get(f"{admin}/readyz", timeout=10)
        if ready.status_code == 503:
            break
        assert time.monotonic() < deadline, "never draining"
        time.sleep(0.05)
    assert ready.json()["reason"] == "draining"
    assert httpx.get(f"{admin}/healthz", timeout=10).status_code == 200  # not a liveness failure
    assert server.process.wait(timeout=WAIT_SECONDS) == 0


def test_a_taken_admin_port_stops_the_start(
    demo_database: str, idp: IdpProcess, audit_key: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_served(
            tmp_path,
            database=demo_database,
            issuer=idp.issuer,
            audit_key=audit_key,
            env=_env(admin_port=str(port)),
            wait="no",
        )
        assert server.process.wait(timeout=WAIT_SECONDS) == 3, server.log.read_text()


def test_every_worker_serves_the_admin_port(
    tmp_path: Path,
    demo_database: str,
    idp: IdpProcess,
    audit_key: str,
    redis_server: RedisProcess,
    token_for: Callable[..., str],
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())
    env = _env(workers="2", redis_url=redis_server.url, admin_port=str(free_port()))
    with served(
        tmp_path,
        policy=policy,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        env=env,
    ) as server:
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + WAIT_SECONDS
        while len(seen) < 2:  # new connections until both workers have answered
            body = httpx.get(f"{server.health_base}/readyz", timeout=10).json()
            seen[body["worker"]] = body
            assert time.monotonic() < deadline, f"only workers {set(seen)} answered"
        assert set(seen) == {1, 2}
        token = {"Authorization": f"Bearer {token_for('support-console')}"}
        assert httpx.get(f"{server.base}/v1/orders/O-1001", headers=token).status_code == 200
        assert httpx.get(f"{server.base}/metrics").status_code == 404
        # Any worker answers the scrape with the sum of both (gauges are published each second).
        while "\nspangate_ready 1.0\n" not in (
            metrics := httpx.get(f"{server.health_base}/metrics", timeout=10).text
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        assert 'spangate_statement_duration_seconds_count{query="get_order"} 1.0' in metrics
