"""OpenAPI 3.1 built from the loaded policy.

Every route of the policy: its path, query and body parameters with their types and constraints
(claim-bound and cursor-bound ones hidden: a caller cannot set them; a paginated query's
``cursor``, and ``next_cursor`` in its answer), the bearer security scheme, the response
shape with the statement's columns and their types (from Spanner's PLAN result metadata, see
``gateway.spanner.analyze``; generic rows when the policy has not been analysed; a masked
column as what its mask answers, or, where ``unless`` roles see it clear, either, with a
description naming the roles and ``x-spangate-mask``: one document serves every caller), the
``Idempotency-Key`` header of writes, and the problem+json errors each operation can answer.
Built per request of ``/openapi.json`` from the policy being served, so it follows hot reloads.

One JSON representation per Spanner type (docs/api/types.md): parameters accept what
``gateway.policy.types.coerce`` accepts; results are what ``gateway.spanner.results.to_json`` gives.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.approvals.record import MAX_CURSOR_CHARS as APPROVAL_CURSOR_CHARS
from gateway.intrange import int_range_pattern
from gateway.policy.bind import BODY_METHODS, ParamSpec
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.model import Mask
from gateway.policy.pagination import CURSOR_ARGUMENT
from gateway.policy.types import INT64_MAX, INT64_MIN
from gateway.shaping.cursors import MAX_CURSOR_CHARS
from gateway.shaping.masks import HASH_LENGTH, REDACTED
from gateway.spanner.analyze import Analysis, Column

__all__ = [
    "CURSOR_SCHEMA",
    "NEXT_CURSOR_SCHEMA",
    "json_schema_of",
    "masked_schema",
    "openapi_document",
    "path_schema",
    "response_schema",
    "result_schema",
]

_NON_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
# A paginated query's cursor, as the caller passes it back (docs/pagination.md).
CURSOR_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_CURSOR_CHARS,
    "pattern": "^[A-Za-z0-9_-]+$",
    "description": "The next_cursor of the previous page, as it was answered (opaque; it opens "
    "only for the caller it was answered to, with the same parameters, until it expires). "
    "Absent (or null): the first page.",
}
NEXT_CURSOR_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]+$",
    "description": "Present when more rows follow: pass it as cursor, with the same "
    "parameters, for the next page. Absent on the last page.",
}
_INT_TEXT = {"type": "string", "pattern": int_range_pattern(INT64_MIN, INT64_MAX)}
_NUMERIC_TEXT = r"^[+-]?[0-9]{1,29}(?:\.[0-9]{1,9})?$"  # NUMERIC: 38 digits, 9 after the point
# A PostgreSQL-dialect policy's NUMERIC is PG.NUMERIC: 131072 digits before the point, 16383
# after, or NaN (ParamType.postgresql).
_PG_NUMERIC_TEXT = r"^(?:[+-]?[0-9]{1,131072}(?:\.[0-9]{1,16383})?|NaN)$"
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"  # padded
_DATE_TEXT = r"^(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])$"
_TIMESTAMP_TEXT = (
    r"^(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)

# Parameters in a JSON body.
_BODY: dict[str, dict[str, Any]] = {
    "BOOL": {"type": "boolean"},
    "INT64": {"oneOf": [{"type": "integer", "format": "int64"}, _INT_TEXT]},
    "FLOAT64": {"oneOf": [{"type": "number"}, _NON_FINITE]},
    "NUMERIC": {"type": "string", "format": "decimal", "pattern": _NUMERIC_TEXT},
    "STRING": {"type": "string"},
    "BYTES": {"type": "string", "contentEncoding": "base64", "pattern": _BASE64},
    "DATE": {"type": "string", "format": "date", "pattern": _DATE_TEXT},
    "TIMESTAMP": {"type": "string", "format": "date-time", "pattern": _TIMESTAMP_TEXT},
    "JSON": {},
}
# Parameters in a path or query string (always text on the wire).
_TEXT: dict[str, dict[str, Any]] = {
    **_BODY,
    "INT64": {"type": "integer", "format": "int64"},
    "FLOAT64": {"type": "number"},
    # A JSON parameter in a query string is a JSON document; a single one is described with
    # ``content`` (see _query_parameter), the elements of an ARRAY<JSON> (repeated keys) by this
    # pattern: numbers, strings without escapes, true, false, null, {} and [] (all JSON; the
    # gateway accepts any JSON document).
    "JSON": {
        "type": "string",
        "contentMediaType": "application/json",
        "pattern": r'^(?:-?(?:0|[1-9][0-9]{0,15})|"[^"\\\x00-\x1f]*"|true|false|null|\{\}|\[\])$',
    },
}
# Result columns.
_RESULT: dict[str, dict[str, Any]] = {
    "BOOL": {"type": "boolean"},
    "INT64": {"type": "integer", "format": "int64"},
    "FLOAT64": {"oneOf": [{"type": "number"}, _NON_FINITE]},
    "FLOAT32": {"oneOf": [{"type": "number"}, _NON_FINITE]},
    "NUMERIC": {"type": "string", "format": "decimal"},
    "STRING": {"type": "string"},
    "BYTES": {"type": "string", "contentEncoding": "base64"},
    "DATE": {"type": "string", "format": "date"},
    "TIMESTAMP": {"type": "string", "format": "date-time"},
    "JSON": {},
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if not schema:
        return schema  # {} already allows null
    if isinstance(schema.get("type"), str) and set(schema) <= {"type", "format"}:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def json_schema_of(spec: ParamSpec, *, text: bool = False) -> dict[str, Any]:
    """The JSON Schema of a parameter: in a JSON body, or as text (path, query string)."""
    table = _TEXT if text else _BODY
    ptype = spec.ptype
    kind = ptype.element or ptype.kind
    element = dict(table[kind])
    if kind == "NUMERIC" and ptype.postgresql:
        element["pattern"] = _PG_NUMERIC_TEXT
    bounds = {
        key: value
        for key, value in (("minimum", spec.min), ("maximum", spec.max))
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if bounds and kind == "INT64" and "oneOf" in element:  # both forms, each bounded
        lo = int(bounds.get("minimum", INT64_MIN))
        hi = int(bounds.get("maximum", INT64_MAX))
        digits = {"type": "string", "pattern": int_range_pattern(lo, hi)}
        element["oneOf"] = [{**element["oneOf"][0], **bounds}, digits]
    elif bounds and "oneOf" in element:  # FLOAT64: the bounds hold for the number branch
        element["oneOf"] = [{**element["oneOf"][0], **bounds}, *element["oneOf"][1:]]
    else:
        element.update(bounds)
    if spec.pattern is not None:
        element["pattern"] = spec.pattern.pattern
    if spec.enum is not None:
        element = {**{k: v for k, v in element.items() if k != "oneOf"}, "enum": list(spec.enum)}
    if kind == "STRING" and spec.max_length is not None and not ptype.is_array:
        element["maxLength"] = spec.max_length
    if ptype.is_array:
        # A query string has no null: its array elements are values (JSON arrays may hold null).
        items = element if text else _nullable(element)
        schema: dict[str, Any] = {"type": "array", "items": items}
        if spec.max_length is not None:
            schema["maxItems"] = spec.max_length
    else:
        schema = element
    if spec.has_default:
        from gateway.policy.types import json_value

        schema["default"] = json_value(spec.default)
    return _nullable(schema) if spec.nullable and not text else schema


# What the router accepts as one path segment: no dot segment, slash, backslash or control
# character (``gateway.policy.router.decode_path``), and not empty.
_SEGMENT = r"^(?!\.\.?$)[^/\\\x00-\x1f\x7f]+$"


def path_schema(spec: ParamSpec) -> dict[str, Any]:
    schema = json_schema_of(spec, text=True)
    if schema.get("type") != "string":
        return schema
    if "pattern" in schema:
        return {"allOf": [schema, {"type": "string", "pattern": _SEGMENT}]}
    return {**schema, "pattern": _SEGMENT}


def _query_parameter(name: str, spec: ParamSpec) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": not spec.has_default and not spec.nullable,
    }
    if spec.ptype.kind == "JSON":  # one JSON document, serialised into the query string
        parameter["content"] = {"application/json": {"schema": json_schema_of(spec)}}
        return parameter
    parameter["schema"] = json_schema_of(spec, text=True)
    if spec.ptype.is_array:
        parameter.update(style="form", explode=True)
    return parameter


def result_schema(column: Column) -> dict[str, Any]:
    """The JSON Schema of a result column's values (any column may be NULL)."""
    element = dict(_RESULT.get(column.scalar, {}))
    if column.is_array:
        return _nullable({"type": "array", "items": _nullable(element)})
    return _nullable(element)


_HASH_PATTERN = f"^[A-Za-z0-9_-]{{{HASH_LENGTH}}}$"


def _masked_element(scalar: str, mode: str) -> dict[str, Any]:
    """What one masked value (or array element) may be, null included."""
    string = scalar == "STRING"
    if mode == "redact" and string:
        return {"enum": [REDACTED, None]}
    if mode == "last4" and string:
        return {"type": ["string", "null"], "pattern": r"^\*\*\*", "maxLength": 7}
    if mode == "hash":
        return {"type": ["string", "null"], "pattern": _HASH_PATTERN}
    return {"type": "null"}


def masked_schema(column: Column, mask: Mask) -> dict[str, Any]:
    """The JSON Schema of a column's values masked by ``mask`` (``gateway.shaping.masks``)."""
    mode = mask.with_
    if mode == "null":
        schema: dict[str, Any] = {"type": "null"}
    elif column.is_array:
        schema = {"type": ["array", "null"], "items": _masked_element(column.scalar, mode)}
    else:
        schema = _masked_element(column.scalar, mode)
    extension: dict[str, Any] = {"with": mode, "unless": list(mask.unless)}
    if mask.domain is not None:  # the columns of one domain hash alike: a client may join them
        extension["domain"] = mask.domain
    return {**schema, "x-spangate-mask": extension}


def _column_schema(
    column: Column, mask: Mask | None, masked: Collection[str] | None
) -> dict[str, Any]:
    """A column's schema: clear; masked (``masked`` names it, or its mask has no ``unless``);
    or, for every caller at once (``masked`` None), either, as the caller's roles decide."""
    if mask is None:
        return result_schema(column)
    hidden = masked_schema(column, mask)
    if masked is not None:  # one caller's (an MCP token's tools/list)
        if column.name not in masked:
            return result_schema(column)
        return {**hidden, "description": f"masked ({mask.with_}) for this caller"}
    if not mask.unless:
        return {**hidden, "description": f"masked ({mask.with_}) for every caller"}
    roles = ", ".join(mask.unless)
    return {
        "anyOf": [
            result_schema(column),
            {k: v for k, v in hidden.items() if k != "x-spangate-mask"},
        ],
        "description": f"masked ({mask.with_}) unless the caller holds a role of: {roles}; then "
        "clear",
        "x-spangate-mask": hidden["x-spangate-mask"],
    }


def _problems(statuses: list[tuple[int, str]]) -> dict[str, Any]:
    ref = {
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    }
    return {str(status): {"description": text, **ref} for status, text in statuses}


def _problem_statuses(route: CompiledRoute) -> list[tuple[int, str]]:
    body = route.model.method in BODY_METHODS
    dml = route.query.is_dml
    invalid = "A parameter, the body or the request is invalid (param-*, body-*, path-invalid"
    if route.query.paging is not None:
        invalid += ", cursor-invalid, cursor-expired"
    if route.model.approval is not None:
        invalid += ", approval-id-invalid"
    statuses = [
        (400, invalid + ")"),
        (401, "Missing or invalid bearer token"),
        (403, "No role allows this call, a deny role holds, or a claim is missing"),
        (404, "No route"),
    ]
    if route.model.approval is not None:
        statuses[2] = (403, statuses[2][1] + "; approval-mismatch, approval-rejected")
    if dml or route.model.approval is not None:
        conflict = "Spanner: conflict, parent-row-missing, precondition-failed or aborted" if dml else ""
        if route.model.approval is not None:
            conflict += ("; " if conflict else "") + (
                "approval-pending, approval-used, approval-expired"
            )
        statuses.append((409, conflict))
    if body:
        statuses += [(413, "Body or statement too large"), (415, "The body is not JSON")]
    if dml:
        statuses.append((422, "idempotency-key-reused or too-many-mutations"))
    statuses += [
        (500, "A policy, grant or schema mismatch (logged), or an internal error"),
        (503, "Spanner, the identity provider or the audit trail is unavailable (Retry-After)"),
        (504, "The statement did not finish within its timeout"),
    ]
    return statuses


def _who_may_call(policy: CompiledPolicy, allow: list[str]) -> str:
    """The roles a route allows, each with its policy description when it has one."""
    roles = policy.model.roles
    shown = [f"{r} ({roles[r].description})" if roles[r].description else r for r in allow]
    return "Allowed for the roles: " + ", ".join(shown) + "."


def response_schema(
    route: CompiledRoute, analysis: Analysis | None, masked: Collection[str] | None = None
) -> dict[str, Any]:
    """The JSON a route answers. Masked columns: for every caller (``masked`` None: OpenAPI) or
    for one caller, whose masked columns ``masked`` names (MCP's per-token ``outputSchema``)."""
    query = route.query
    shape = analysis.shapes.get(query.name) if analysis is not None else None
    masks = query.model.mask
    row: dict[str, Any] = {"type": "object"}
    if shape is not None:
        row = {
            "type": "object",
            "properties": {
                c.name: _column_schema(c, masks.get(c.name), masked) for c in shape.columns
            },
            "required": [c.name for c in shape.columns],
            "additionalProperties": False,
        }
    rows = {"type": "array", "items": row, "maxItems": query.model.max_rows}
    stamp = {"type": "string", "format": "date-time"}
    if query.is_dml and not query.sql.returning:
        return {
            "type": "object",
            "required": ["row_count", "commit_timestamp"],
            "properties": {"row_count": {"type": "integer"}, "commit_timestamp": stamp},
            "additionalProperties": False,
        }
    properties: dict[str, Any] = {
        "rows": rows,
        "row_count": {"type": "integer"},
        "truncated": {"type": "boolean"},
    }
    required = ["rows", "row_count", "truncated"]
    if query.is_dml:
        properties["commit_timestamp"] = stamp
        required.append("commit_timestamp")
    if query.paging is not None:
        rows["maxItems"] = query.paging.max
        properties["next_cursor"] = dict(NEXT_CURSOR_SCHEMA)
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def _operation(
    policy: CompiledPolicy, route: CompiledRoute, analysis: Analysis | None
) -> dict[str, Any]:
    query = route.query
    method = route.model.method
    visible = {n: s for n, s in query.params.items() if s.caller_sets}
    parameters: list[dict[str, Any]] = [
        {"name": n, "in": "path", "required": True, "schema": path_schema(visible[n])}
        for n in route.path_params
    ]
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}_{query.name}_{route.index}",
        "summary": route.model.description or query.model.description or query.name,
        "description": _who_may_call(policy, route.model.allow),
        "security": [{"bearer": []}],
        "x-spangate-query": query.name,
        "x-spangate-allow": list(route.model.allow),
    }
    rest = {n: s for n, s in visible.items() if n not in route.path_params}
    if method in BODY_METHODS:
        required = [n for n, s in rest.items() if not s.has_default and not s.nullable]
        body_schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {n: json_schema_of(s) for n, s in rest.items()},
        }
        if query.paging is not None:
            body_schema["properties"][CURSOR_ARGUMENT] = {
                "anyOf": [CURSOR_SCHEMA, {"type": "null"}]
            }
        if required:
            body_schema["required"] = required
        operation["requestBody"] = {
            "required": bool(required),
            "content": {"application/json": {"schema": body_schema}},
        }
    else:
        parameters += [_query_parameter(n, s) for n, s in rest.items()]
        if query.paging is not None:
            parameters.append(
                {
                    "name": CURSOR_ARGUMENT,
                    "in": "query",
                    "required": False,
                    "description": CURSOR_SCHEMA["description"],
                    "schema": {k: v for k, v in CURSOR_SCHEMA.items() if k != "description"},
                }
            )
    if query.is_dml:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    approval = route.model.approval
    if approval is not None:
        parameters.append({"$ref": "#/components/parameters/ApprovalId"})
        operation["x-spangate-approvers"] = list(approval.approvers)
        operation["description"] += (
            f" Waits for approval by {', '.join(approval.approvers)} (ttl {approval.ttl}): "
            "without Approval-Id it answers 202 approval-required and runs nothing."
        )
    if parameters:
        operation["parameters"] = parameters
    operation["responses"] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": response_schema(route, analysis)}},
        },
        **(
            {
                "202": {
                    "description": "approval-required: nothing ran; an approver decides, then "
                    "repeat the call with Approval-Id (Location: the request)",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ApprovalRequired"}
                        }
                    },
                }
            }
            if approval is not None
            else {}
        ),
        **_problems(_problem_statuses(route)),
    }
    return operation


_APPROVAL = {
    "type": "object",
    "required": ["id", "state", "route", "query", "params", "approvers", "requester",
                 "created_at", "expires_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "state": {"type": "string",
                  "enum": ["pending", "approved", "rejected", "used", "expired"]},
        "route": {"type": "string"},
        "query": {"type": "string"},
        "params": {"type": "object", "description": "The bound values (audit.redact's as their "
                   "keyed hash)."},
        "approvers": {"type": "array", "items": {"type": "string"}},
        "requester": {"type": "object"},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "decided_by": {"type": ["object", "null"]},
        "reason": {"type": ["string", "null"]},
        "used_at": {"type": ["string", "null"], "format": "date-time"},
    },
}  # fmt: skip


def _approvals_paths() -> dict[str, Any]:
    """``/approvals``: the approvers' endpoints (``gateway.approvals.endpoints``)."""
    one = {"application/json": {"schema": {
        "type": "object", "properties": {"approval": {"$ref": "#/components/schemas/Approval"}},
    }}}  # fmt: skip
    idp = {"name": "id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}  # fmt: skip
    errors = _problems([
        (400, "approval-id-invalid, query-invalid, query-not-allowed, body-invalid, "
              "param-unknown, cursor-invalid"),
        (401, "Missing or invalid bearer token"),
        (403, "not-approver, denied-by-role, approval-own-request"),
        (404, "approval-not-found, no-route"),
        (409, "approval-decided, approval-expired"),
        (503, "approval-table-missing, Spanner, the identity provider or the audit trail"),
    ])  # fmt: skip

    def decide(verb: str) -> dict[str, Any]:
        return {
            "operationId": f"{verb}_approval",
            "summary": f"{verb.capitalize()} a pending request (approvers only, never its "
            "requester)",
            "security": [{"bearer": []}],
            "parameters": [idp],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"reason": {"type": "string", "maxLength": 1000}},
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "Decided", "content": one},
                **errors,
                **_problems([(413, "Body too large"), (415, "The body is not JSON")]),
            },
        }

    return {
        "/approvals": {"get": {
            "operationId": "list_approvals",
            "summary": "Requests to routes the caller may decide (pending: unexpired, not its "
            "own), oldest first",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "state", "in": "query", "required": False, "schema": {
                    "type": "string", "enum": ["pending", "approved", "rejected", "used"],
                    "default": "pending"}},
                {"name": "limit", "in": "query", "required": False, "schema": {
                    "type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
                {"name": "cursor", "in": "query", "required": False,
                 "description": "The next_cursor of the previous page, with the same state: "
                 "the requests after its last one. Absent: the first page.",
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$",
                            "maxLength": APPROVAL_CURSOR_CHARS}},
            ],
            "responses": {"200": {"description": "At most limit requests", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "approvals": {"type": "array",
                                  "items": {"$ref": "#/components/schemas/Approval"}},
                    "state": {"type": "string"},
                    "truncated": {"type": "boolean", "description": "There were more: "
                                  "next_cursor continues"},
                    "next_cursor": {"type": "string", "description": "Only when there were "
                                    "more: ?cursor= (same state) answers the next page"},
                }}}}}, **errors},
        }},
        "/approvals/{id}": {"get": {
            "operationId": "get_approval",
            "summary": "One request (its requester, or who may decide it)",
            "security": [{"bearer": []}],
            "parameters": [idp],
            "responses": {"200": {"description": "The request", "content": one}, **errors},
        }},
        "/approvals/{id}/approve": {"post": decide("approve")},
        "/approvals/{id}/reject": {"post": decide("reject")},
    }  # fmt: skip


def openapi_document(
    policy: CompiledPolicy, *, version: str, analysis: Analysis | None = None
) -> dict[str, Any]:
    """The OpenAPI document of ``policy``; ``analysis`` (its PLAN analysis) types the rows."""
    paths: dict[str, dict[str, Any]] = {}
    for route in policy.routes:
        operation = _operation(policy, route, analysis)
        paths.setdefault(route.template, {})[route.model.method.lower()] = operation
    if any(r.model.approval is not None for r in policy.routes):
        paths.update(_approvals_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "spangate", "version": version, "x-policy-sha256": policy.sha256},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Retrying a write with the same key returns the first "
                    "response and applies nothing again; the same key for another request is "
                    "422 idempotency-key-reused.",
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[\\x20-\\x7e]+$",
                    },
                },
                "ApprovalId": {
                    "name": "Approval-Id",
                    "in": "header",
                    "required": False,
                    "description": "The id of an approved request for exactly this call: it "
                    "runs once (409 approval-used after). Without it: 202 approval-required.",
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                },
            },
            "schemas": {
                "Approval": _APPROVAL,
                "ApprovalRequired": {
                    "type": "object",
                    "required": ["code", "detail", "approval", "request_id"],
                    "properties": {
                        "code": {"const": "approval-required"},
                        "detail": {"type": "string"},
                        "approval": {"$ref": "#/components/schemas/Approval"},
                        "request_id": {"type": "string"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "code", "request_id"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                        "request_id": {"type": "string"},
                        "param": {"type": "string"},
                        "outcome": {
                            "type": "string",
                            "enum": ["committed", "not-committed", "unknown"],
                            "description": "A failed write's: not-committed (certain; it never "
                            "will), unknown (its Commit was sent: retry with the same "
                            "Idempotency-Key), committed (only with audit-unavailable).",
                        },
                    },
                },
            },
        },
    }
