"""The log of a real ``spangate serve``: one JSON line per request, all lines JSON, text on a TTY.

The server runs the example policy on the session's emulator and OpenID provider
(``tests/served.py``); its stderr is a file (JSON, the default off a terminal) or a pseudo-terminal
(``pty``: human-readable lines).
"""

from __future__ import annotations

import json
import os
import pty
import re
import secrets
import select
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from served import EXAMPLE_POLICY, SPANGATE, served, stop_process

from gateway.dev.idp import IdpProcess
from gateway.dev.ports import free_port

MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}
FIELDS = {
    "time", "severity", "logger", "message", "trace_id", "span_id", "request_id", "transport",
    "method", "path", "route", "query", "tool", "status", "code", "latency_ms", "subject",
    "issuer", "client", "user_agent",
}  # fmt: skip


def raw_request(port: int, head: bytes) -> bytes:
    """Send ``head`` (a whole request) as it is; the answer's bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_every_request_is_one_json_line_and_the_whole_log_is_json(
    tmp_path: Path,
    demo_database: str,
    idp: IdpProcess,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    run = secrets.token_hex(4)
    rid = {name: f"{run}-{name}" for name in (
        "read", "denied", "no-token", "no-route", "healthz", "mcp-call", "mcp-list",
        "hostile-agent", "hostile-path", "long-agent",
    )}  # fmt: skip
    support = {"Authorization": f"Bearer {token_for('support-console')}"}
    agent = token_for("order-agent")
    trace_id = secrets.token_hex(16)
    # what the HTTP parser lets through (controls but tab are refused before the gateway):
    # bytes beyond ASCII (C1 controls, as Latin-1), a tab, quotes and braces
    hostile_agent = b'evil\x85\x9b31m\xff\t{"severity":"CRITICAL"}\xe2\x80\xa8'

    with served(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        env={"SPANGATE_LOG_LEVEL": "info"},
    ) as server:
        base = server.base

        def get(path: str, name: str, **headers: str) -> httpx.Response:
            return httpx.get(base + path, headers={"X-Request-ID": rid[name], **headers}, timeout=30)

        parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        assert get("/v1/orders/O-1001", "read", traceparent=parent, **support).status_code == 200
        outsider = {"Authorization": f"Bearer {token_for('outsider')}"}
        assert get("/v1/orders/O-1001", "denied", **outsider).status_code == 403
        assert get("/v1/orders/O-1001", "no-token").status_code == 401
        assert get("/v1/nothing/here", "no-route", **support).status_code == 404
        assert get("/healthz", "healthz").status_code == 200
        call = {
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_order", "arguments": {"order_id": "O-1001"}},
        }  # fmt: skip
        for name, body in (
            ("mcp-call", call),
            ("mcp-list", {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
        ):
            answer = httpx.post(
                base + "/mcp",
                json=body,
                headers={**MCP_HEADERS, "Authorization": f"Bearer {agent}", "X-Request-ID": rid[name]},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        for name, target, user_agent in (
            ("hostile-agent", b"/v1/orders/O-1001", hostile_agent),
            ("hostile-path", b'/v1/%0A{"severity":"CRITICAL"}%1B[31m/../<script>\\', b"curl/8"),
            ("long-agent", b"/v1/orders/O-1001", b"a" * 20_000),
        ):
            answer = raw_request(
                server.port,
                b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"User-Agent: " + user_agent + b"\r\nX-Request-ID: " + rid[name].encode()
                + b"\r\n\r\n",
            )
            assert rid[name].encode() in answer, answer[:300]  # the gateway answered it
    text = server.log.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line JSON
    assert any(x["message"].startswith("Started server process") for x in lines)  # uvicorn's
    access = [x for x in lines if x["logger"] == "spangate.access"]
    assert all(set(x) == FIELDS for x in access), access[0]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in access:
        by_id.setdefault(line["request_id"], []).append(line)
    for name, request_id in rid.items():
        assert len(by_id.get(request_id, [])) == 1, f"{name}: {by_id.get(request_id)}"
    one = {name: by_id[request_id][0] for name, request_id in rid.items()}
    read = one["read"]
    assert (read["status"], read["code"], read["route"], read["query"]) == (
        200, "ok", "GET /v1/orders/{order_id}", "get_order"
    )
    assert read["trace_id"] == trace_id  # the caller's, traces being off
    assert (read["subject"], read["issuer"], read["transport"]) == ("support-console", "okta", "http")
    assert read["latency_ms"] > 0 and read["severity"] == "INFO"
    assert (one["denied"]["status"], one["denied"]["severity"]) == (403, "WARNING")
    assert one["denied"]["code"] == "no-allow-role"
    assert (one["no-token"]["status"], one["no-token"]["subject"]) == (401, None)
    assert (one["no-route"]["status"], one["no-route"]["code"]) == (404, "no-route")
    assert (one["healthz"]["status"], one["healthz"]["code"]) == (200, None)
    mcp = one["mcp-call"]
    assert (mcp["transport"], mcp["tool"], mcp["query"], mcp["code"]) == (
        "mcp", "get_order", "get_order", "ok"
    )
    assert mcp["subject"] == "order-agent"
    assert (one["mcp-list"]["transport"], one["mcp-list"]["code"]) == ("mcp", None)
    assert one["hostile-agent"]["user_agent"] == hostile_agent.decode("latin-1")
    assert one["hostile-path"]["path"] == '/v1/%0A{"severity":"CRITICAL"}%1B[31m/../<script>\\'
    assert one["hostile-path"]["status"] == 401  # no token: refused before any route
    assert len(one["long-agent"]["user_agent"].encode()) <= 512 + 3
    for line in access:  # never a token or a query string
        assert "Bearer" not in json.dumps(line) and "eyJ" not in json.dumps(line)


def test_a_terminal_gets_human_readable_lines(
    tmp_path: Path,
    demo_database: str,
    idp: IdpProcess,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SPANNER_EMULATOR_HOST": demo_database,
        "OKTA_ISSUER": idp.issuer,
        "SPANGATE_AUDIT_PATH": str(tmp_path / "audit.jsonl"),
        "SPANGATE_AUDIT_KEY": audit_key,
        "SPANGATE_LOG_LEVEL": "info",
    }
    env.pop("SPANGATE_LOG_FORMAT", None)
    main, terminal = pty.openpty()
    process = subprocess.Popen(
        [*SPANGATE, "serve", "--policy", str(EXAMPLE_POLICY), "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""

    def read_until(pattern: bytes) -> re.Match[bytes]:
        nonlocal seen
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(pattern, seen)
            if found:
                return found
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(main, 65536)
                except OSError:  # the terminal closed: the server exited
                    break
            elif process.poll() is not None:
                break
        raise AssertionError(f"no {pattern!r} in:\n{seen.decode(errors='replace')}")

    try:
        read_until(rb"Uvicorn running on")
        answer = httpx.get(
            f"http://127.0.0.1:{port}/v1/orders/O-1001",
            headers={
                "Authorization": f"Bearer {token_for('support-console')}",
                "User-Agent": "tty-test",
            },
            timeout=30,
        )
        assert answer.status_code == 200
        rid = answer.headers["x-request-id"].encode()
        line = read_until(rb"[^\n]*rid=" + rid + rb"[^\r\n]*").group(0)
    finally:
        stop_process(process)
        os.close(main)
    assert re.match(
        rb"\d\d:\d\d:\d\d\.\d{3} INFO +GET /v1/orders/O-1001 -> 200 ok [\d.]+ ms  rid=",
        line.lstrip(b"\r\n"),
    ), line
    assert b"route=GET /v1/orders/{order_id} query=get_order sub=support-console iss=okta" in line
    assert b"ua=tty-test" in line
    assert b'{"time"' not in seen  # not one JSON line on the terminal
    assert re.search(rb"\d\d:\d\d:\d\d\.\d{3} INFO +uvicorn\.error: Started server process", seen)
