"""Which /mcp POSTs take the single-exchange entry (``single_tool_call``): one handshake-era
``tools/call`` request the SDK's transport would dispatch; everything else stays the SDK
manager's (the 2026-07-28 revision, unknown revisions, a refused Accept, notifications,
batches, bodies that are no JSON-RPC request, other methods)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.mcp.server import json_of, single_tool_call

CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "get_order", "arguments": {"order_id": "O-1001"}},
}


def scope(version: str | None = "2025-11-25", accept: str = "application/json") -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"accept", accept.encode())]
    if version is not None:
        headers.append((b"mcp-protocol-version", version.encode()))
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}


@pytest.mark.parametrize("version", ["2025-11-25", "2025-06-18", None])
def test_a_handshake_era_tools_call_is_served_in_one_exchange(version: str | None) -> None:
    single = single_tool_call(scope(version), json_of(json.dumps(CALL).encode()))
    assert single is not None
    message, negotiated = single
    assert (message.id, message.method) == (7, "tools/call")
    assert negotiated == (version or "2025-03-26")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (scope("2026-07-28"), CALL),  # the modern revision: the SDK's modern entry
        (scope("1999-01-01"), CALL),  # an unknown revision: the SDK's refusal
        (scope(accept="text/event-stream"), CALL),  # the SDK's 406
        (scope(), {**CALL, "method": "tools/list"}),
        (scope(), {k: v for k, v in CALL.items() if k != "id"}),  # a notification
        (scope(), [CALL]),  # a batch
        (scope(), {**CALL, "jsonrpc": "1.0"}),
        (scope(), "not json-rpc"),
    ],
)
def test_everything_else_is_the_sdk_managers(headers: dict[str, Any], body: object) -> None:
    assert single_tool_call(headers, json_of(json.dumps(body).encode())) is None
    assert single_tool_call(scope(), json_of(b"{not json")) is None
