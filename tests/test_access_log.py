"""The request line of requests that make no call (fixed endpoints, MCP messages other than
tools/call), through the real app (the session gateway, traces off; its own gateway where a test
needs one). The line's fields are read from the record (``REQUEST_EXTRA``), as the formatters do.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.app import Gateway
from gateway.dev.idp import IdpProcess
from gateway.http import Message
from gateway.logs import REQUEST_EXTRA
from gateway.runtime import build_gateway
from gateway.settings import Settings

MCP_HEADERS = {
    "Host": "127.0.0.1:8080",
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


def line_of(caplog: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    (line,) = [
        r
        for r in caplog.records
        if r.name == "spangate.access" and getattr(r, REQUEST_EXTRA)["request_id"] == request_id
    ]
    return line


async def test_without_a_call_the_line_carries_the_callers_trace(
    gateway: Gateway,
    client: httpx.AsyncClient,
    token_for: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Traces off: a fixed endpoint and an MCP tools/list log the caller's traceparent (or
    X-Cloud-Trace-Context), as the audit event of a call records it."""
    assert gateway.tracing is None
    caplog.set_level(logging.INFO, "spangate.access")
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    parent = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    health = await client.get("/healthz", headers=parent)
    listed = await client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        headers={**MCP_HEADERS, **parent, "Authorization": f"Bearer {token_for('order-agent')}"},
    )
    cloud = await client.get(
        "/readyz", headers={"X-Cloud-Trace-Context": f"{trace_id}/{int(span_id, 16)};o=1"}
    )
    bare = await client.get("/healthz")
    assert [a.status_code for a in (health, listed, cloud)] == [200, 200, 200], listed.text
    for answer in (health, listed, cloud):
        line = line_of(caplog, answer.headers["x-request-id"])
        assert (getattr(line, "trace_id", None), getattr(line, "span_id", None)) == (
            trace_id,
            span_id,
        )
    assert getattr(line_of(caplog, bare.headers["x-request-id"]), "trace_id", None) is None


async def test_a_fixed_endpoint_cancelled_before_it_answers_is_499(
    settings: Settings,
    idp: IdpProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/readyz waits for the budget store's probe; Redis here is a socket that accepts and
    never answers, so the server gives up on the request first: its line says 499, not 500."""
    caplog.set_level(logging.INFO, "spangate.access")
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    update: dict[str, Any] = {
        "audit_path": tmp_path / "audit.jsonl",
        "redis_url": SecretStr(f"redis://127.0.0.1:{port}/0"),
        "redis_timeout_seconds": 60.0,
    }
    app = build_gateway(settings.model_copy(update=update), env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    rid = secrets.token_hex(8)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/readyz", "raw_path": b"/readyz", "query_string": b"",
        "headers": [(b"host", b"gw.test"), (b"x-request-id", rid.encode())],
        "client": ("203.0.113.7", 5000), "server": ("127.0.0.1", 8080),
    }  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # no body, no disconnect: the server cancels
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        asking = asyncio.create_task(app(scope, receive, send))
        silent.settimeout(30)
        conn, _ = await asyncio.to_thread(silent.accept)  # the probe is waiting for Redis
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        conn.close()
    finally:
        silent.close()
        await app.shutdown()
    assert sent == []
    assert getattr(line_of(caplog, rid), REQUEST_EXTRA)["status"] == 499
