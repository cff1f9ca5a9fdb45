"""What the gateway's spans say (``gateway.tracing`` creates them): OpenTelemetry's semantic
conventions for HTTP (the request's span), MCP and GenAI tools (``/mcp``), databases (the
statement's span), and the gateway's own ``spangate.*`` attributes.

Never a token, a parameter value or a query string: the request's path as shown
(``gateway.policy.redaction.shown_path``: redacted segments hidden), the whitelisted SQL, stable
codes. Caller-supplied strings (method, user agent, path, tool name) are cut to
``MAX_STRING_BYTES`` bytes of UTF-8.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, Status, StatusCode

from gateway.audit.bounds import MAX_STRING_BYTES, cut
from gateway.http import Scope

if TYPE_CHECKING:
    from gateway.audit.event import CallRecord
    from gateway.policy.compiled import CompiledPolicy, CompiledQuery

__all__ = ["METHODS", "finish_request_span", "request_attributes", "statement_attributes"]

# HTTP methods the conventions name; any other is "_OTHER" (its name in ...method_original)
METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)


def _text(value: str | None) -> str | None:
    """A caller's string as an attribute holds it: at most MAX_STRING_BYTES bytes of UTF-8."""
    if value is None or len(value) * 4 <= MAX_STRING_BYTES:
        return value
    return cut(value, MAX_STRING_BYTES)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    value = next((v for k, v in headers if k == name), None)
    return value.decode("latin-1") if value is not None else None


def request_attributes(scope: Scope, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The request's span's attributes when it starts (``headers``: the scope's); the rest is
    set when it ends (``finish_request_span``)."""
    method = scope["method"]
    known = method in METHODS
    server = scope.get("server") or (None, None)
    client = scope.get("client") or (None, None)
    attributes: dict[str, Any] = {  # url.path is set by finish: redacted segments hidden
        "http.request.method": method if known else "_OTHER",
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if not known:
        attributes["http.request.method_original"] = _text(method)
    optional = {
        "server.address": server[0],
        "server.port": server[1],
        "network.peer.address": client[0],
        "network.peer.port": client[1],
        "user_agent.original": _text(_header(headers, b"user-agent")),
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def finish_request_span(
    span: Span,
    scope: Scope,
    call: CallRecord | None,
    status: int,
    outcome: int,
    *,
    path: str,
    mcp: bool,
) -> None:
    """Name the request's span after its route (``/mcp`` for MCP: the tool is an
    attribute) and set what the request came to: ``status`` what HTTP answered,
    ``outcome`` how the call ended (an MCP tool call that failed is answered 200), ``path``
    the path as shown (``gateway.policy.redaction.shown_path``: never a redacted value).
    An outcome of 5xx is an error (``error.type``: the stable code)."""
    decision = call.decision if call is not None else None
    route = decision.route if decision is not None else None
    method = scope["method"]
    template = "/mcp" if mcp else route.template if route is not None else None
    if template is not None:
        span.update_name(f"{method if method in METHODS else 'HTTP'} {template}")
        span.set_attribute("http.route", template)
    span.set_attribute("url.path", _text(path) or "")
    span.set_attribute("http.response.status_code", status)
    if call is not None:
        code = call.error.code if call.error is not None else "ok"
        attributes: dict[str, Any] = {
            "spangate.request_id": call.request_id,
            "spangate.transport": call.transport,
            "spangate.code": code,
        }
        if call.client is not None:
            attributes["client.address"] = call.client
        if route is not None:
            attributes["spangate.query"] = route.query_name
            attributes["spangate.route"] = f"{route.model.method} {route.template}"
        if call.principal is not None:
            attributes["spangate.issuer"] = call.principal.issuer
        if mcp:
            attributes["mcp.method.name"] = "tools/call"
            attributes["gen_ai.operation.name"] = "execute_tool"
            if call.tool is not None:
                attributes["gen_ai.tool.name"] = _text(call.tool)
        span.set_attributes(attributes)
        if outcome >= 500:
            span.set_attribute("error.type", code)
    elif outcome >= 500:
        span.set_attribute("error.type", str(outcome))
    if outcome >= 500:
        span.set_status(Status(StatusCode.ERROR))


def statement_attributes(
    query: CompiledQuery, policy: CompiledPolicy, database: str
) -> dict[str, Any]:
    """The statement's span's attributes (database semantic conventions: the whitelisted SQL,
    never a parameter value; the identity and database role it runs under)."""
    identity = query.model.identity
    spec = policy.model.identities.get(identity)
    return {
        "db.system.name": "gcp.spanner",
        "db.namespace": database,
        "db.query.text": query.model.sql,
        "db.operation.name": "DML" if query.is_dml else "SELECT",
        "spangate.query": query.name,
        "spangate.identity": identity,
        "spangate.database_role": (spec.database_role if spec else None) or "",
    }
