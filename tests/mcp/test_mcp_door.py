"""/mcp's door through the gateway's ASGI app (the session gateway: real emulator, real OpenID
provider): what it does when something at the door fails unexpectedly."""

from __future__ import annotations

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
