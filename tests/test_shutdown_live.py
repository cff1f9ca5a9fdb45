"""SIGTERM under load, through a real ``spangate serve`` (one process, and ``--workers 2``): /readyz
says 503 ``draining`` while the server still answers, requests in flight finish, the trail is
flushed, the exit code is 0, and nothing acknowledged is lost: every answer a client received
(2xx, 4xx) has exactly one audit event, and every trail verifies."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from served import Served, start_served

from gateway.cli import main
from gateway.dev.idp import IdpProcess
from gateway.dev.redis import RedisProcess

CLIENTS = 8
LOAD_BEFORE_SIGNAL = 60  # answers received before SIGTERM is sent
EXIT_SECONDS = 90  # bounds the wait for the exit (a loaded machine), never asserted on


@dataclass(frozen=True)
class Answer:
    request_id: str
    status: int
    after_signal: bool  # sent after SIGTERM
    closes: bool  # the answer said Connection: close
    kept_alive: bool  # the client did not ask for that
    before_signal: bool  # answered before SIGTERM was sent


def _requests(
    client: int, support: str, writer: str
) -> Callable[[int], tuple[str, str, dict[str, str], dict[str, object] | None]]:
    """Request ``i`` of client ``client``: reads (200), no token (401), no route (404); client 0
    also writes (one write at a time, so the emulator's single writer is not the subject). Odd
    clients ask for a new connection each time (so each worker gets some: a kept-alive
    connection stays with the worker that accepted it); even ones keep theirs alive."""

    def make(i: int) -> tuple[str, str, dict[str, str], dict[str, object] | None]:
        rid = f"shutdown-{client}-{i}-{time.time_ns()}"
        auth = {"X-Request-ID": rid, "Authorization": f"Bearer {support}"}
        if client % 2:
            auth["Connection"] = "close"
        if client == 0 and i % 4 == 3:
            body = {"order_id": f"O-{time.time_ns() % 10**12}", "customer_id": "C-1", "total_cents": 5}
            return "POST", "/v1/orders", {**auth, "Authorization": f"Bearer {writer}"}, body
        kind = i % 3
        if kind == 0:
            return "GET", "/v1/orders/O-1001", auth, None
        if kind == 1:
            return "GET", "/v1/orders/O-1001", {k: v for k, v in auth.items() if k != "Authorization"}, None
        return "GET", "/v1/nothing-here", auth, None

    return make


async def _load(
    server: Served, client: int, make: Callable[..., tuple[str, str, dict[str, str], object]],
    answers: list[Answer], signalled: asyncio.Event,
) -> None:  # fmt: skip
    """Requests one after another on a keep-alive connection (a new one when the server closed
    it) until the server process has exited."""
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        i = 0
        while server.process.poll() is None:
            method, path, headers, body = make(i)
            i += 1
            after = signalled.is_set()
            try:
                answer = await http.request(method, path, headers=headers, json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.02)  # closed, refused: not an answer
                continue
            closes = answer.headers.get("connection") == "close"
            kept = headers.get("Connection") != "close"
            before = not signalled.is_set()
            answers.append(
                Answer(headers["X-Request-ID"], answer.status_code, after, closes, kept, before)
            )


async def _watch_readyz(server: Served, signalled: asyncio.Event, seen: list[dict[str, object]]) -> None:
    """After SIGTERM, /readyz on new connections until the server stops answering."""
    await signalled.wait()
    while server.process.poll() is None:
        try:
            async with httpx.AsyncClient(base_url=server.base, timeout=5) as http:
                answer = await http.get("/readyz")
        except httpx.TransportError:
            await asyncio.sleep(0.02)
            continue
        seen.append({**answer.json(), "http": answer.status_code})
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_drains_and_loses_nothing_acknowledged(
    workers: int, tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    redis_server: RedisProcess, token_for: Callable[..., str],
) -> None:  # fmt: skip
    env = {
        "SPANGATE_DRAIN_SECONDS": "2",
        "SPANGATE_WORKERS": str(workers),
        "SPANGATE_REDIS_URL": redis_server.url,
    }
    server = start_served(
        tmp_path, database=demo_database, issuer=idp.issuer, audit_key=audit_key, env=env
    )
    try:
        support, writer = token_for("support-console"), token_for("order-writer")
        answers: list[Answer] = []
        readyz: list[dict[str, object]] = []
        signalled = asyncio.Event()
        tasks = [
            asyncio.create_task(_load(server, n, _requests(n, support, writer), answers, signalled))
            for n in range(CLIENTS)
        ]
        watcher = asyncio.create_task(_watch_readyz(server, signalled, readyz))
        deadline = time.monotonic() + EXIT_SECONDS
        while len(answers) < LOAD_BEFORE_SIGNAL:
            assert time.monotonic() < deadline, f"no load: {server.log.read_text()}"
            await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        signalled.set()
        while server.process.poll() is None:
            assert time.monotonic() < deadline, f"never exited: {server.log.read_text()}"
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, watcher)
    finally:
        if server.process.poll() is None:
            server.stop()
    assert server.process.returncode == 0, server.log.read_text()

    # /readyz said 503 draining (with the reason) while the server still answered.
    draining = [r for r in readyz if r["http"] == 503]
    assert draining and all(r["reason"] == "draining" for r in draining), readyz
    assert any(a.after_signal and a.status == 200 for a in answers)  # served during the drain
    # kept-alive connections: closed by the drain's answers, never before the signal
    assert not any(a.closes for a in answers if a.kept_alive and a.before_signal)
    assert any(a.closes for a in answers if a.kept_alive and a.after_signal)

    # Nothing acknowledged is lost: one event for every answer received.
    events = server.events()
    per_id = Counter(
        e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
        for e in events
        if "settlement" not in e["protoPayload"]["metadata"]
    )
    received = [a for a in answers if 200 <= a.status < 500]
    assert {a.status for a in received} >= {200, 401, 404}
    missing = [a for a in received if per_id[a.request_id] != 1]
    assert not missing, f"{len(missing)} answers without exactly one event: {missing[:5]}"
    assert max(per_id.values()) == 1  # no request recorded twice
    if workers == 2:
        assert {e["worker"] for e in events} == {1, 2}

    key_file = tmp_path / "audit.key"
    key_file.write_text(audit_key)
    files = [str(p) for p in server.trail_files()]
    assert main(["audit", "verify", "--key-file", str(key_file), *files]) == 0


def test_a_call_still_running_at_the_shutdown_timeout_is_answered_shutting_down(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str,
    token_for: Callable[..., str],
) -> None:  # fmt: skip
    env = {
        "SPANGATE_DRAIN_SECONDS": "0",
        "SPANGATE_SHUTDOWN_TIMEOUT_SECONDS": "1",
        "SPANGATE_BODY_TIMEOUT_SECONDS": "300",  # the body never ends: only the shutdown ends it
    }
    server = start_served(
        tmp_path, database=demo_database, issuer=idp.issuer, audit_key=audit_key, env=env
    )
    rid = f"cut-short-{time.time_ns()}"
    body = b'{"order_id": "O-1", "customer_id": "C-1", "total_cents": 5}'
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(
                b"POST /v1/orders HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {token_for('order-writer')}\r\nX-Request-ID: {rid}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )  # fmt: skip
            time.sleep(0.5)  # the gateway reads the body (no assertion rests on this)
            server.process.send_signal(signal.SIGTERM)
            conn.settimeout(EXIT_SECONDS)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        server.process.wait(EXIT_SECONDS)
    finally:
        if server.process.poll() is None:
            server.stop()
    assert server.process.returncode == 0, server.log.read_text()
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(content)
    assert (problem["code"], problem["request_id"]) == ("shutting-down", rid)
    events = server.events(rid)
    assert len(events) == 1
    assert events[0]["httpRequest"]["status"] == 503 and "shutting-down" in json.dumps(events[0])
