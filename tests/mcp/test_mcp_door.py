"""/mcp's door through the gateway's ASGI app (the session gateway: real emulator, real OpenID
provider): what it does when something at the door fails unexpectedly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
HEADERS = {
    "Host": "127.0.0.1:8080",
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


def event_of(audit_path: Path, request_id: str) -> dict[str, Any]:
    for line in audit_path.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if event["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id:
            return event
    raise AssertionError(f"no audit event for {request_id}")


async def test_an_unexpected_error_at_the_door_is_an_audited_500(
    gateway: Gateway,
    client: httpx.AsyncClient,
    token_for: Callable[..., str],
    audit_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(token: str) -> Any:  # a bug in the verifier, say
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway.active.verifier, "verify", broken)
    answer = await client.post(
        "/mcp",
        json=LIST,
        headers={**HEADERS, "Authorization": f"Bearer {token_for('order-agent')}"},
    )
    assert answer.status_code == 500, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "internal" and "boom" not in answer.text
    payload = event_of(audit_path, problem["request_id"])["protoPayload"]
    assert payload["status"]["message"] == "internal"
    assert payload["metadata"]["transport"] == "mcp"


async def test_a_request_cancelled_at_the_door_is_a_499_event(
    gateway: Gateway, token_for: Callable[..., str], audit_path: Path
) -> None:
    """The server gives up on a request whose body is still arriving: one event, 499."""
    rid = "mcp-door-cancelled-1"
    waiting = asyncio.Event()

    async def receive() -> dict[str, Any]:
        waiting.set()
        await asyncio.Event().wait()  # the rest of the body never comes
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        raise AssertionError(f"nothing is answered: {message}")

    token = token_for("order-agent")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"x-request-id", rid.encode()),
        ],
        "client": ("203.0.113.7", 50000),
        "server": ("127.0.0.1", 8080),
    }
    task = asyncio.create_task(gateway(scope, receive, send))
    await asyncio.wait_for(waiting.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(600):  # the event is queued (record_nowait): written soon after
        if audit_path.exists() and rid in audit_path.read_text():
            break
        await asyncio.sleep(0.1)
    payload = event_of(audit_path, rid)["protoPayload"]
    assert payload["status"]["message"] == "cancelled"
    assert event_of(audit_path, rid)["httpRequest"]["status"] == 499
