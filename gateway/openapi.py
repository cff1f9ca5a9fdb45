"""OpenAPI 3.1 built from the loaded policy: every route, its parameters (claim-bound ones hidden),
the bearer scheme, the response shapes and the problem+json errors. Rebuilt on every request for
/openapi.json, so it always follows the policy being served."""

from __future__ import annotations

from typing import Any

from gateway.policy.bind import BODY_METHODS, ParamSpec
from gateway.policy.compiled import CompiledPolicy

__all__ = ["json_schema_of", "openapi_document"]

_SCALAR_SCHEMAS: dict[str, dict[str, Any]] = {
    "BOOL": {"type": "boolean"},
    "INT64": {
        "oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[+-]?[0-9]+$"}],
        "format": "int64",
    },
    "FLOAT64": {
        "oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]
    },
    "NUMERIC": {"type": "string", "format": "decimal"},
    "STRING": {"type": "string"},
    "BYTES": {"type": "string", "contentEncoding": "base64"},
    "DATE": {"type": "string", "format": "date"},
    "TIMESTAMP": {"type": "string", "format": "date-time"},
    "JSON": {},
}


def json_schema_of(spec: ParamSpec) -> dict[str, Any]:
    ptype = spec.ptype
    element = dict(_SCALAR_SCHEMAS[ptype.element or ptype.kind])
    if spec.pattern is not None:
        element["pattern"] = spec.pattern.pattern
    if spec.enum is not None:
        element["enum"] = list(spec.enum)
    for key, value in (("minimum", spec.min), ("maximum", spec.max)):
        if isinstance(value, int | float) and not isinstance(value, bool):
            element[key] = value
    if ptype.is_array:
        schema: dict[str, Any] = {"type": "array", "items": element}
        if spec.max_length is not None:
            schema["maxItems"] = spec.max_length
    else:
        schema = element
        if spec.max_length is not None and ptype.kind == "STRING":
            schema["maxLength"] = spec.max_length
    if spec.has_default:
        from gateway.audit.event import audit_value

        schema["default"] = audit_value(spec.default)
    if spec.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _problem_responses() -> dict[str, Any]:
    ref = {
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    }
    return {
        str(status): {"description": text, **ref}
        for status, text in (
            (400, "Bad request (a parameter is missing, unknown or invalid)"),
            (401, "Missing or invalid bearer token"),
            (403, "No role allows this call, or a deny role holds"),
            (404, "No route"),
            (413, "Body too large"),
            (503, "Spanner, the identity provider or the audit trail is unavailable"),
        )
    }


def openapi_document(policy: CompiledPolicy, *, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in policy.routes:
        query = route.query
        method = route.model.method
        visible = {n: s for n, s in query.params.items() if s.claim is None}
        parameters = [
            {"name": n, "in": "path", "required": True, "schema": json_schema_of(visible[n])}
            for n in route.path_params
        ]
        operation: dict[str, Any] = {
            "operationId": f"{method.lower()}_{query.name}_{route.index}",
            "summary": route.model.description or query.model.description or query.name,
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
            if required:
                body_schema["required"] = required
            operation["requestBody"] = {
                "required": bool(required),
                "content": {"application/json": {"schema": body_schema}},
            }
        else:
            parameters += [
                {
                    "name": n,
                    "in": "query",
                    "required": not s.has_default and not s.nullable,
                    "schema": json_schema_of(s),
                    **({"explode": True} if s.ptype.is_array else {}),
                }
                for n, s in rest.items()
            ]
        if parameters:
            operation["parameters"] = parameters
        schema = (
            "#/components/schemas/Write"
            if query.is_dml and not query.sql.returning
            else "#/components/schemas/Rows"
        )
        operation["responses"] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": schema}}},
            },
            **_problem_responses(),
        }
        paths.setdefault(route.template, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "spangate", "version": version, "x-policy-sha256": policy.sha256},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Rows": {
                    "type": "object",
                    "required": ["rows", "row_count", "truncated"],
                    "properties": {
                        "rows": {"type": "array", "items": {"type": "object"}},
                        "row_count": {"type": "integer"},
                        "truncated": {"type": "boolean"},
                        "commit_timestamp": {"type": "string", "format": "date-time"},
                    },
                },
                "Write": {
                    "type": "object",
                    "required": ["row_count"],
                    "properties": {
                        "row_count": {"type": "integer"},
                        "commit_timestamp": {"type": "string", "format": "date-time"},
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
                    },
                },
            },
        },
    }
