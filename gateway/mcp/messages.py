"""The JSON-RPC messages ``/mcp``'s door reads itself before the SDK does (pure): a body's JSON
parsed once, strictly as the HTTP routes read theirs (``read_json``: ``gateway.http.parse_json``;
else the JSON-RPC parse error, ``parse_error``); a handshake-era body that is no JSON-RPC message
(``envelope_refusal``), and params a method's model refuses (``params_problem``), told in words
that name the member and what it must be, never pydantic's text; a ``tools/call`` the SDK would
refuse before any tool runs
(``malformed_tool_call``, answered by the door so that it is audited); one handshake-era
``tools/call`` that the SDK's single-exchange entry may serve (``single_tool_call``), and among
those the plain ones the gateway answers itself (``plain_tool_call``) with the bytes the SDK's
runner would answer (``tool_result_body``).
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.methods import (
    SPEC_CLIENT_METHODS,
    serialize_server_result,
    validate_client_request,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request

from gateway.errors import BadRequest, GatewayError
from gateway.http import Scope, dumps, parse_json

__all__ = [
    "NOT_JSON",
    "PLAIN_RESULT_VERSIONS",
    "envelope_refusal",
    "jsonrpc_error",
    "malformed_tool_call",
    "params_problem",
    "parse_error",
    "plain_tool_call",
    "read_json",
    "single_tool_call",
    "tool_result_body",
]

NOT_JSON: Any = object()  # ``read_json``'s value for a body that is no JSON


def read_json(body: bytes) -> tuple[Any, str | None]:
    """The body's JSON value, parsed once for the door's looks at it, and strictly, as the HTTP
    routes read theirs (``parse_json``: UTF-8, no duplicate keys, no NaN/Infinity, no lone
    surrogates, at most 100 levels), so that the SDK, which parses it again leniently, sees
    exactly what the gateway checked: (the value, None), or (``NOT_JSON``, why not)."""
    try:
        return parse_json(body), None
    except BadRequest as exc:
        return NOT_JSON, exc.detail


def jsonrpc_error(code: int, message: str, rpc_id: str | int | None = None) -> bytes:
    """A JSON-RPC error response's bytes (``id`` null when the request's is unknown)."""
    return dumps({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}})


def parse_error(why: str) -> bytes:
    """The JSON-RPC parse error (-32700) of a body that is no strict JSON (``read_json``'s why);
    the door answers it with 400, as the SDK's transports answer their parse errors."""
    return jsonrpc_error(types.PARSE_ERROR, f"Parse error: {why}")


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _envelope_problem(message: Any) -> str:
    """What makes ``message`` (JSON) no JSON-RPC 2.0 message, naming the member."""
    if not isinstance(message, dict):
        return "the body must be one JSON-RPC message, an object (batches are not supported)"
    if message.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if "method" in message:
        if not isinstance(message["method"], str):
            return "method must be a string"
        if "id" in message and not _is_id(message["id"]):
            return "id must be a string or an integer (or absent, for a notification)"
        if message.get("params") is not None and not isinstance(message["params"], dict):
            return "params must be an object (or absent)"
    elif "result" in message or "error" in message:
        if not _is_id(message.get("id")):
            return "a response's id must be a string or an integer"
        error = message.get("error")
        if "error" in message and not (
            isinstance(error, dict)
            and isinstance(error.get("code"), int)
            and isinstance(error.get("message"), str)
        ):
            return "error must be an object with an integer code and a string message"
        if "result" in message and not isinstance(message["result"], dict):
            return "result must be an object"
    else:
        return "a JSON-RPC message needs a method (a request or notification)"
    return "the body is not a JSON-RPC 2.0 request, notification or response"


# pydantic's error types -> what the member must be (the rest: "is not valid")
_MUST_BE = {
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "list_type": "an array",
    "tuple_type": "an array",
    "none_required": "null",
}


def _member(root: Any, loc: tuple[int | str, ...], missing: bool) -> str:
    """The path of the member a pydantic error is about, as far as ``loc`` walks the value
    itself (pydantic's own steps, such as a union member's type, walk nothing and are left
    out); a missing member's name ends it."""
    path: list[str] = []
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path[-1:] = [f"{path[-1] if path else ''}[{part}]"]
            continue
        elif missing and i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str):
            pass
        else:
            continue
        path.append(part)
    return ".".join(path) or "the message"


def _describe(exc: ValidationError, root: Any) -> str:
    """A pydantic error in words (each member once, in pydantic's order): "params.cursor must
    be a string", "params.clientInfo is required"; never pydantic's text, model names, input
    or URLs."""
    wanted: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        kind = error["type"]
        member = _member(root, tuple(error["loc"]), kind == "missing")
        if kind == "missing":
            what = "is required"
        elif kind == "extra_forbidden":
            what = "is not allowed"
        elif kind in _MUST_BE:
            what = _MUST_BE[kind]
        else:
            what = "is not valid"
        if what not in wanted.setdefault(member, []):
            wanted[member].append(what)
    parts = []
    for member, whats in wanted.items():
        kinds = [w for w in whats if w in _MUST_BE.values()]
        others = [w for w in whats if w not in kinds]
        if kinds:
            parts.append(f"{member} must be {' or '.join(kinds)}")
        parts.extend(f"{member} {w}" for w in others if not kinds)
    return "; ".join(parts)


def params_problem(method: str, version: str, params: Any) -> str | None:
    """Why the spec's model of ``method`` refuses ``params`` (in ``version``), naming each
    member and what it must be (``_describe``); None when it takes them, or knows no such
    method (then the SDK's own answer stands)."""
    if method not in SPEC_CLIENT_METHODS:
        return None
    try:
        validate_client_request(method, version, params)
    except ValidationError as exc:
        return _describe(exc, {"params": params}) or None
    except KeyError:  # not a method of this revision: the SDK's "Method not found"
        return None
    return None


def malformed_tool_call(message: Any) -> tuple[dict[str, Any], GatewayError] | None:
    """A JSON-RPC ``tools/call`` request (one message, with an id; ``message`` as ``read_json``
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


def _handshake_version(scope: Scope, request: Request | None) -> str | None:
    """The revision of a POST that the SDK's handshake-era JSON transport reads
    (``MCP-Protocol-Version`` absent, its default, or one of ``HANDSHAKE_PROTOCOL_VERSIONS``,
    and ``Accept`` taking JSON); else None (the 2026-07-28 revision and unknown ones: the SDK's
    modern entry; no acceptable ``Accept``: its 406)."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    version = next((v.decode("latin-1") for k, v in headers if k == _VERSION_HEADER), None)
    if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    if not check_accept_headers(request if request is not None else Request(scope))[0]:
        return None  # the SDK's 406
    return version if version is not None else types.DEFAULT_NEGOTIATED_VERSION


def envelope_refusal(scope: Scope, parsed: Any, request: Request | None = None) -> bytes | None:
    """The answer (400) to a handshake-era POST whose JSON (``parsed``) is no JSON-RPC message:
    the code the SDK's transport answers (-32602), with a message naming the member and what it
    must be, instead of the SDK's pydantic text; else None (a message, or not that transport's:
    the SDK answers)."""
    if parsed is NOT_JSON or _handshake_version(scope, request) is None:
        return None
    try:
        types.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except (ValueError, ValidationError):
        return jsonrpc_error(types.INVALID_PARAMS, _envelope_problem(parsed))
    return None


def single_tool_call(
    scope: Scope, parsed: Any, request: Request | None = None
) -> tuple[types.JSONRPCRequest, str] | None:
    """A POST that the SDK's stateless JSON transport would hand its dispatcher as one
    ``tools/call`` request of the handshake era (``MCP-Protocol-Version`` absent or one of
    ``HANDSHAKE_PROTOCOL_VERSIONS``, ``Accept`` taking JSON, a body that is one JSON-RPC request,
    checked by the SDK's own model; ``parsed`` as ``read_json`` parsed it; ``request``: the
    scope's, when the caller has one, its headers parsed once): (the request, its
    protocol version); else None
    (everything else, the 2026-07-28 revision and every refusal included, is the SDK
    manager's)."""
    version = _handshake_version(scope, request)
    if version is None or parsed is NOT_JSON:
        return None
    try:
        message = types.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except (ValueError, ValidationError):  # no JSON-RPC message: ``envelope_refusal``'s
        return None
    if not isinstance(message, types.JSONRPCRequest) or message.method != "tools/call":
        return None
    return message, version


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
