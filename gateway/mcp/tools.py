"""The MCP tools of a policy, per token (pure): one tool per route that the token's roles allow.

A route's tool is named by its ``tool:`` key, else by its query's name (``tool: false``: no tool).
``inputSchema``: the parameters the caller supplies, in their JSON form (``gateway.openapi``'s
body schemas: types, min/max, max_length, pattern, enum, default, nullable); path parameters are
always required, with the OpenAPI path schema (text, one path segment: the router's rule, never
null); claim-bound and cursor-bound parameters never appear. A write's tool also takes
``idempotency_key`` (the ``Idempotency-Key`` header's twin), a route with approval's tool
``approval_id`` (the ``Approval-Id`` header's twin), a paginated query's tool ``cursor``
(the ``next_cursor`` of the previous page; absent or null: the first page). ``outputSchema``: the
JSON the HTTP route answers (``next_cursor`` included), with the rows typed from the policy's
PLAN analysis when there is one, and each masked column as it is masked for this token (exact:
tools/list is per token).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gateway.auth.principal import Principal
from gateway.openapi import CURSOR_SCHEMA, json_schema_of, path_schema, response_schema
from gateway.policy.approval import APPROVAL_ARGUMENT, APPROVAL_HEADER
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.decide import (
    IDEMPOTENCY_ARGUMENT,
    role_verdict,
    takes_approval_id,
    takes_idempotency_key,
    tool_parameters,
)
from gateway.policy.masking import masked_columns
from gateway.policy.pagination import CURSOR_ARGUMENT
from gateway.spanner.analyze import Analysis
from gateway.spanner.idempotency import HEADER as IDEMPOTENCY_HEADER

__all__ = [
    "IDEMPOTENCY_ARGUMENT",
    "arguments_of",
    "find_tool",
    "input_schema",
    "tool_document",
    "tools_for",
]

_IDEMPOTENCY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": "^[\\x20-\\x7e]+$",  # null or absent: no key
    "description": "Retrying this write with the same key returns the first result and applies "
    "nothing again; the same key with other arguments is idempotency-key-reused.",
}


_APPROVAL_SCHEMA = {
    "type": ["string", "null"],
    "pattern": "^[0-9a-f]{32}$",
    "description": "This tool waits for a person's approval: called without approval_id it "
    "runs nothing and answers approval-required with an approval id; once an approver "
    "approved it, call it again with exactly the same arguments and that approval_id: it runs "
    "once.",
}


def input_schema(route: CompiledRoute) -> dict[str, Any]:
    """The JSON Schema of a tool's arguments."""
    visible = {n: s for n, s in route.query.params.items() if s.caller_sets}
    properties: dict[str, Any] = {
        n: path_schema(s) if n in route.path_params else json_schema_of(s)
        for n, s in visible.items()
    }
    required = list(route.path_params) + [
        n
        for n, s in visible.items()
        if n not in route.path_params and not s.has_default and not s.nullable
    ]
    if takes_idempotency_key(route):
        properties[IDEMPOTENCY_ARGUMENT] = dict(_IDEMPOTENCY_SCHEMA)
    if takes_approval_id(route):
        properties[APPROVAL_ARGUMENT] = dict(_APPROVAL_SCHEMA)
    if route.query.paging is not None:
        properties[CURSOR_ARGUMENT] = {
            "type": ["string", "null"],
            **{k: v for k, v in CURSOR_SCHEMA.items() if k != "type"},
        }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def tool_document(
    route: CompiledRoute, analysis: Analysis | None, masked: Collection[str] = ()
) -> dict[str, Any]:
    """The ``tools/list`` entry of a route (MCP's Tool, as JSON); ``masked``: the result
    columns masked for the token it is listed for."""
    name = route.tool_name
    assert name is not None
    description = route.model.description or route.query.model.description
    tool: dict[str, Any] = {
        "name": name,
        "inputSchema": input_schema(route),
        "outputSchema": response_schema(route, analysis, masked),
        "annotations": (
            {"readOnlyHint": False, "idempotentHint": True}  # with the same idempotency_key
            if route.query.is_dml
            else {"readOnlyHint": True}
        ),
    }
    if description:
        tool["description"] = description
    return tool


def tools_for(
    policy: CompiledPolicy, principal: Principal, analysis: Analysis | None
) -> list[dict[str, Any]]:
    """The tools ``principal`` may call: the routes its roles allow (deny wins), as for HTTP,
    each with the result columns masked for it as a call would mask them."""
    tools = []
    for route in policy.routes:
        if route.tool_name is None:
            continue
        roles, _, refused = role_verdict(policy, route, principal)
        if refused is None:
            masked = masked_columns(route.query.model, roles)
            tools.append(tool_document(route, analysis, masked))
    return tools


def find_tool(policy: CompiledPolicy, name: str) -> CompiledRoute | None:
    return policy.tool(name)


def arguments_of(
    route: CompiledRoute, arguments: Mapping[str, Any] | None
) -> tuple[dict[str, str], dict[str, Any], list[tuple[bytes, bytes]]]:
    """A tool call's arguments -> (the path parameters, as the router hands them over; the other
    parameters, as a JSON body binds them; the ``Idempotency-Key`` header they carry). A path
    argument that is no string or integer, or no valid path segment, raises ``path-invalid``.
    The key is checked where the header's is, after the decision (``idempotency-key-invalid``):
    a key that is no string is as bad as an empty one."""
    path, values = tool_parameters(route, arguments)
    headers: list[tuple[bytes, bytes]] = []
    approval = (arguments or {}).get(APPROVAL_ARGUMENT)
    if takes_approval_id(route) and approval is not None:  # checked as the header is
        raw = approval.encode("utf-8", "replace") if isinstance(approval, str) else b""
        headers.append((APPROVAL_HEADER, raw))
    key = (arguments or {}).get(IDEMPOTENCY_ARGUMENT)
    if not takes_idempotency_key(route) or key is None:  # null or absent: no key, as no header
        return path, values, headers
    raw = key.encode("utf-8", "replace") if isinstance(key, str) else b""
    return path, values, [*headers, (IDEMPOTENCY_HEADER, raw)]
