"""Which /mcp POSTs take the single-exchange entry (``single_tool_call``): one handshake-era
``tools/call`` request the SDK's transport would dispatch; everything else stays the SDK
manager's (the 2026-07-28 revision, unknown revisions, a refused Accept, notifications,
batches, bodies that are no JSON-RPC request, other methods)."""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
import pytest
from mcp_types.methods import serialize_server_result, validate_client_request
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway.http import dumps
from gateway.mcp.messages import (
    NOT_JSON,
    PLAIN_RESULT_VERSIONS,
    envelope_refusal,
    params_problem,
    parse_error,
    plain_tool_call,
    read_json,
    single_tool_call,
    tool_result_body,
)

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
    single = single_tool_call(scope(version), read_json(json.dumps(CALL).encode())[0])
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
    assert single_tool_call(headers, read_json(json.dumps(body).encode())[0]) is None
    assert single_tool_call(scope(), read_json(b"{not json")[0]) is None


# -- the gateway's own answer to a plain tools/call (plain_tool_call, tool_result_body) ---------


def request(params: Any) -> types.JSONRPCRequest:
    return types.JSONRPCRequest(jsonrpc="2.0", id=7, method="tools/call", params=params)


def test_the_revision_every_client_here_speaks_is_answered_by_the_gateway() -> None:
    # the SDK's sieve keeps a tool result as it is in every handshake-era revision it serves
    assert set(PLAIN_RESULT_VERSIONS) == set(HANDSHAKE_PROTOCOL_VERSIONS)
    assert "2025-11-25" in PLAIN_RESULT_VERSIONS
    assert plain_tool_call(request(CALL["params"]), "2025-11-25")


@pytest.mark.parametrize(
    "params",
    [
        {"name": "get_order", "arguments": {"order_id": "O-1001"}, "_meta": {"progressToken": 1}},
        {"name": "get_order", "arguments": {}, "task": {"ttl": 1000}},
        {"name": "get_order", "arguments": {}, "extra": 1},
        None,
    ],
)
def test_params_beyond_name_and_arguments_are_the_sdk_runners(params: Any) -> None:
    assert not plain_tool_call(request(params), "2025-11-25")


def test_a_revision_outside_the_plain_ones_is_the_sdk_runners() -> None:
    assert not plain_tool_call(request(CALL["params"]), "2026-07-28")


PLAIN_PARAMS = [
    {"name": "get_order", "arguments": {"order_id": "O-1001"}},
    {"name": "get_order"},
    {"name": "get_order", "arguments": None},
    {"name": "", "arguments": {}},
    {"name": "x" * 1000, "arguments": {"a": [1, {"b": None}], "c": 1.5, "d": True}},
]


@pytest.mark.parametrize("version", HANDSHAKE_PROTOCOL_VERSIONS)
@pytest.mark.parametrize("params", PLAIN_PARAMS)
def test_every_revision_takes_plain_params_as_they_are(
    version: str, params: dict[str, Any]
) -> None:
    """What the gateway skips for a plain call: the SDK's two params validations (the revision's
    surface, then the handler's model) accept it and hand the handler the same name and
    arguments."""
    assert plain_tool_call(request(params), version)
    validate_client_request("tools/call", version, params)
    typed = types.CallToolRequestParams.model_validate(params, by_name=False)
    assert (typed.name, typed.arguments) == (params["name"], params.get("arguments"))


ANSWERS = [
    {"rows": [{"OrderId": "O-1001", "TotalCents": 7499, "CreatedAt": "2026-02-01T12:00:00Z"}]},
    {"rows": [], "row_count": 0, "truncated": False, "next_cursor": None},
    {"text": 'quotes " and \\ and \n\t\u0001 controls, ünïcödé, 日本, emoji 🙂, </script>'},
    {"big": 2**63 + 1, "negative": -5, "nested": [[{"a": [None, True, False]}]]},
    {"code": "path-invalid", "status": 400, "detail": "a bad 'order_id'", "request_id": "r"},
]


def sdk_answer(version: str, rpc_id: str | int, answer: dict[str, Any], is_error: bool) -> bytes:
    """What the SDK's runner and JSON transport answer for the tool result the gateway's
    handler returns (``Handlers.call_tool``)."""
    result = types.CallToolResult(
        content=[types.TextContent(text=dumps(answer).decode("utf-8"))],
        structured_content=answer,
        is_error=is_error,
    ).model_dump(by_alias=True, mode="json", exclude_none=True)
    shaped = serialize_server_result("tools/call", version, result)
    reply = types.JSONRPCResponse(jsonrpc="2.0", id=rpc_id, result=shaped)
    return reply.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")


@pytest.mark.parametrize("version", sorted(PLAIN_RESULT_VERSIONS))
@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("is_error", [False, True])
@pytest.mark.parametrize("rpc_id", [7, "req-7", 2**70, ""])
def test_the_gateway_answers_the_bytes_the_sdk_would(
    version: str, answer: dict[str, Any], is_error: bool, rpc_id: str | int
) -> None:
    ours = tool_result_body(rpc_id, answer, is_error)
    theirs = sdk_answer(version, rpc_id, answer, is_error)
    assert json.loads(ours) == json.loads(theirs)
    assert ours == theirs


def test_floats_answer_the_same_numbers() -> None:
    answer = {"ratio": 0.1, "big": 1e16, "small": 1e-7, "whole": 2.0}
    ours = json.loads(tool_result_body(1, answer, False))
    assert ours == json.loads(sdk_answer("2025-11-25", 1, answer, False))
    assert json.loads(ours["result"]["content"][0]["text"]) == answer


# -- strict JSON and protocol errors in words (read_json, envelope_refusal, params_problem) -----


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":1,"id":1}',
        b'{"params":{"arguments":{"a":{"b":1,"b":2}}}}',
        b'{"params":{"arguments":{"a":NaN}}}',
        b"[Infinity]",
        b"[-Infinity]",
        b'{"params":{"arguments":{"a":1e400}}}',
        b'["\\ud800"]',
    ],
)
def test_the_door_reads_json_as_strictly_as_the_http_routes(raw: bytes) -> None:
    value, why = read_json(raw)
    assert value is NOT_JSON and why is not None and why.startswith("the body is not valid")
    assert read_json(raw)[0] is NOT_JSON
    error = json.loads(parse_error(why))
    assert error == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": error["error"]["message"]},
    }
    assert error["error"]["message"] == f"Parse error: {why}"


def test_only_the_handshake_era_envelope_is_answered_by_the_door() -> None:
    batch = [CALL]
    refusal = envelope_refusal(scope(), batch)
    assert refusal is not None and json.loads(refusal)["error"]["code"] == -32602
    assert envelope_refusal(scope("2026-07-28"), batch) is None  # the SDK's modern answer
    assert envelope_refusal(scope(accept="text/event-stream"), batch) is None  # its 406
    assert envelope_refusal(scope(), CALL) is None  # a message


@pytest.mark.parametrize(
    ("method", "params", "problem"),
    [
        ("tools/list", {"cursor": ["a"]}, "params.cursor must be a string"),
        ("tools/list", {"cursor": "a"}, None),
        ("tools/list", None, None),
        ("tools/call", {}, "params.name is required"),
        ("ping", {"_meta": []}, "params._meta must be an object"),
        ("resources/read", {"uri": 5}, "params.uri must be a string"),
        ("no/such", {"x": 1}, None),  # the SDK's -32601
    ],
)
def test_params_problems_name_the_member(method: str, params: Any, problem: str | None) -> None:
    assert params_problem(method, "2025-11-25", params) == problem
