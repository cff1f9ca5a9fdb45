"""The JSON-RPC messages ``/mcp``'s door reads itself before the SDK does (pure): a body's JSON
parsed once (``json_of``); a ``tools/call`` the SDK would refuse before any tool runs
(``malformed_tool_call``, answered by the door so that it is audited); one handshake-era
``tools/call`` that the SDK's single-exchange entry may serve (``single_tool_call``), and among
those the plain ones the gateway answers itself (``plain_tool_call``) with the bytes the SDK's
runner would answer (``tool_result_body``).
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pydantic_core
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request

from gateway.errors import BadRequest, GatewayError
from gateway.http import Scope, dumps

__all__ = [
    "NOT_JSON",
    "PLAIN_RESULT_VERSIONS",
    "json_of",
    "malformed_tool_call",
    "plain_tool_call",
    "single_tool_call",
    "tool_result_body",
]

NOT_JSON: Any = object()  # ``json_of`` for a body that is no JSON


def json_of(body: bytes) -> Any:
    """The body's JSON value, parsed once for the door's two looks at it (``NOT_JSON`` when it is
    none; the SDK answers such bodies)."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        return NOT_JSON


def malformed_tool_call(message: Any) -> tuple[dict[str, Any], GatewayError] | None:
    """A JSON-RPC ``tools/call`` request (one message, with an id; ``message`` as ``json_of``
    parsed it) whose params the SDK would refuse with -32602 before calling the tool: (the
    message, ``tool-call-invalid``); else None (other messages, and bodies that are no JSON, are
    the SDK's)."""
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    rpc_id = message.get("id")
    if message.get("jsonrpc") != "2.0" or isinstance(rpc_id, bool):
        return None
    if not isinstance(rpc_id, str | int):
        return None  # a notification, or an id the SDK refuses: the SDK's answer
    params = message.get("params")
    if not isinstance(params, dict):
        detail = "tools/call needs params: an object with the tool's name and arguments"
    elif not isinstance(params.get("name"), str):
        detail = "tools/call's name must be a string: the tool's name"
    elif not isinstance(params.get("arguments"), dict | None):
        detail = "tools/call's arguments must be an object (or absent)"
    else:
        return None
    return message, BadRequest(detail, code="tool-call-invalid")


_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode("ascii")


def single_tool_call(
    scope: Scope, parsed: Any, request: Request | None = None
) -> tuple[types.JSONRPCRequest, str] | None:
    """A POST that the SDK's stateless JSON transport would hand its dispatcher as one
    ``tools/call`` request of the handshake era (``MCP-Protocol-Version`` absent or one of
    ``HANDSHAKE_PROTOCOL_VERSIONS``, ``Accept`` taking JSON, a body that is one JSON-RPC request,
    checked by the SDK's own model; ``parsed`` as ``json_of`` parsed it; ``request``: the
    scope's, when the caller has one, its headers parsed once): (the request, its
    protocol version); else None
    (everything else, the 2026-07-28 revision and every refusal included, is the SDK
    manager's)."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    version = next((v.decode("latin-1") for k, v in headers if k == _VERSION_HEADER), None)
    if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    if not check_accept_headers(request if request is not None else Request(scope))[0]:
        return None  # the SDK's 406
    if parsed is NOT_JSON:
        return None
    try:
        message = types.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except (ValueError, ValidationError):  # not JSON, or no JSON-RPC message: the SDK answers
        return None
    if not isinstance(message, types.JSONRPCRequest) or message.method != "tools/call":
        return None
    return message, version if version is not None else types.DEFAULT_NEGOTIATED_VERSION


_PLAIN_PARAMS = frozenset({"name", "arguments"})


def _plain_result_versions() -> frozenset[str]:
    """The handshake-era revisions whose ``tools/call`` result the SDK's serialisation passes
    through unchanged (its per-revision sieve keeps ``content``, ``isError`` and
    ``structuredContent`` as they are): the ones ``tool_result_body`` may answer. Asked of the
    SDK itself, once: a revision whose sieve changes the result stays with the SDK's runner."""
    probe = {
        "content": [{"text": "t", "type": "text"}],
        "isError": False,
        "structuredContent": {"k": [1, None, "v"]},
    }
    plain = set()
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        try:
            shaped = serialize_server_result("tools/call", version, probe)
        except (KeyError, ValueError):  # ValidationError is a ValueError
            continue
        if shaped == probe and list(shaped) == list(probe):
            plain.add(version)
    return frozenset(plain)


PLAIN_RESULT_VERSIONS = _plain_result_versions()


def plain_tool_call(message: types.JSONRPCRequest, version: str) -> bool:
    """May the gateway answer this one ``tools/call`` (``single_tool_call``'s) itself, with the
    bytes the SDK's runner would answer: params that are only ``name`` (a string) and
    ``arguments`` (an object, or absent or null), which every handshake-era revision's params
    model accepts as they are (``malformed_tool_call`` refused other types), and a revision
    whose result the SDK passes through unchanged (``PLAIN_RESULT_VERSIONS``). Anything else
    (``_meta``, ``task``, another revision) is the SDK runner's, with its validation and
    answers."""
    params = message.params
    return (
        version in PLAIN_RESULT_VERSIONS
        and params is not None
        and params.keys() <= _PLAIN_PARAMS
        and isinstance(params.get("name"), str)
        and isinstance(params.get("arguments"), dict | None)
    )


def tool_result_body(rpc_id: str | int, answer: dict[str, Any], is_error: bool) -> bytes:
    """The JSON-RPC response of a ``tools/call`` whose tool answered ``answer`` (the rows, or the
    problem when ``is_error``), as the SDK's runner and JSON transport answer it (same members,
    same order): its text content is the answer's JSON, its structured content the same JSON,
    encoded once."""
    text = dumps(answer)
    return b"".join(
        (
            b'{"jsonrpc":"2.0","id":',
            dumps(rpc_id),
            b',"result":{"content":[{"text":',
            dumps(text.decode("utf-8")),
            b',"type":"text"}],"isError":',
            b"true" if is_error else b"false",
            b',"structuredContent":',
            text,
            b"}}",
        )
    )
