"""The audit event's published JSON Schema, generated from the models below.

``policies/audit-event.schema.json`` is this module's output (``python -m gateway.audit.schema >
policies/audit-event.schema.json``); a test keeps the two equal and validates real events against
``AuditEvent`` (strict: no coercion, no unknown keys). The event builder (``event.py``) writes plain
dicts for speed; these models are its contract, not its implementation.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMA_ID", "AuditEvent", "event_json_schema", "render"]

SCHEMA_ID = "https://spangate.dev/schemas/audit-event-v1.json"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"
_HEX64 = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class HttpRequest(_Model):
    """Cloud Logging's ``HttpRequest``: the only place of the path and the user agent."""

    requestMethod: str
    requestUrl: str = Field(
        description="The path as received and routed, still percent-encoded, without the query "
        "string; a segment a route binds to a parameter audit.redact names is its keyed hash "
        "(at most 512 bytes: see metadata.truncated)."
    )
    status: int = Field(ge=100, le=599, description="The HTTP status the caller received.")
    userAgent: str | None = Field(description="At most 512 bytes: see metadata.truncated.")
    remoteIp: str | None = Field(description="The client, through trusted proxies only.")
    latency: str = Field(pattern=r"^[0-9]+\.[0-9]{6}s$")


class ThirdPartyPrincipal(_Model):
    issuer: str = Field(description="The policy's name for the token's issuer.")
    iss: str
    clientId: str | None
    userId: str | None
    tokenId: str | None = Field(description="The token's jti (never the token).")
    audience: list[str] | None = Field(
        None, description="The token's audiences (aud) its issuer accepts; null: no aud."
    )
    introspected: bool = Field(
        False, description="The token was opaque: its claims are an RFC 7662 answer."
    )
    claimNames: dict[str, str | None] | None = Field(
        None,
        description="The claims the issuer read groups and scopes from ({groups, scopes}; "
        "null: not read).",
    )


class Actor(_Model):
    principalSubject: str | None
    thirdPartyPrincipal: dict[str, Any] | None = Field(
        None, description="{thirdPartyClaims: the actor's other claims}"
    )


class AuthenticationInfo(_Model):
    principalSubject: str
    thirdPartyPrincipal: ThirdPartyPrincipal
    serviceAccountDelegationInfo: list[Actor] = Field(
        description="RFC 8693 act: the current actor first, then the actors it acts for."
    )


class AuthorizationInfo(_Model):
    resource: str = Field(
        description="METHOD /route/{template}; for /approvals, METHOD /approvals/... itself."
    )
    permission: str = Field(
        description="The query the route runs; for /approvals, approval.list, approval.view, "
        "approval.approve or approval.reject."
    )
    granted: bool


class RequestAttributes(_Model):
    id: str = Field(description="The request id (X-Request-ID).")
    time: str = Field(pattern=_TIME, description="When the request arrived.")


class RequestMetadata(_Model):
    """The method, path and user agent are in httpRequest (each caller-supplied string once)."""

    callerIp: str | None
    requestAttributes: RequestAttributes


class Param(_Model):
    value: Any = Field(
        description="The bound value, or redacted:[hmac-]sha256:<hex>; its strings at most 512 "
        "bytes, or null when dropped for the event's size (see metadata.truncated)."
    )
    from_: Literal["claim", "caller", "cursor"] = Field(
        alias="from",
        description="cursor: a paginated query's keyset parameter, bound from the caller's "
        "cursor; its value is never recorded (always null here).",
    )
    defaulted: Literal[True] | None = Field(
        None,
        description="Only when the caller did not send it: the declared default, or null for a "
        "nullable parameter (from is then caller).",
    )
    sent: Any = Field(
        None,
        description="What the caller sent, where the parameter's type changed its form (\"5\" "
        "bound as 5); never for a redacted parameter.",
    )
    text: Literal[True] | None = Field(
        None, description="Only with sent: it came from the path or the query string."
    )


class Statement(_Model):
    query: str
    identity: str
    databaseRole: str | None
    requestTag: str | None
    params: dict[str, Param] | None = Field(description="Null when binding did not succeed.")
    ignoredCallerValues: dict[str, Any] | None = Field(
        description="Values a caller sent for claim-bound parameters: never used, recorded "
        "whether the request was allowed or refused."
    )


class Response(_Model):
    rowCount: int | None
    truncated: bool | None
    commitTimestamp: str | None
    spannerCode: str | None = Field(description="The gRPC status name of a failed statement.")
    outcome: Literal["committed", "not-committed", "unknown"] | None = Field(
        None,
        description="A write's (absent for a read): committed; not-committed (certain); unknown "
        "(its Commit was in flight when the caller was answered 504: a later event with the same "
        "request id and metadata.settlement records how it ended).",
    )


class Status(_Model):
    code: int = Field(ge=0, le=16, description="google.rpc.Code")
    message: str = Field(description="The stable error code; ok when the call succeeded.")


class Decision(_Model):
    allow: bool
    reason: str = Field(description="allowed, or a stable reason code (no-allow-role, …).")
    rule: str | None = Field(description="The role that allowed or denied.")
    roles: list[str] = Field(description="The roles that held for the principal.")


class Truncation(_Model):
    """A caller-supplied value the event holds cut (a string's first bytes) or dropped (null)."""

    field: str = Field(description="Where, as a JSON Pointer (RFC 6901) into the event.")
    bytes: int = Field(ge=0, description="The whole value's size: UTF-8, or canonical JSON.")
    sha256: str = Field(pattern=_HEX64, description="The whole value's SHA-256 (same bytes).")


class Settlement(_Model):
    """On the follow-up event of a write whose Commit was in flight when its caller got 504."""

    outcome: Literal["committed", "not-committed"]
    corrects: str = Field(
        pattern=r"^[0-9a-f]{32}$",
        description="The insertId of the request's own event (outcome unknown).",
    )
    rowInTransaction: str | None = Field(
        description="The insertId of the row the Spanner sink committed with the write, if any."
    )
    settledAfter: str = Field(
        pattern=r"^[0-9]+\.[0-9]{6}s$", description="From the answer to the Commit's outcome."
    )


class McpCall(_Model):
    """What an MCP ``tools/call`` adds to its event (``httpRequest`` is the POST to /mcp)."""

    tool: str | None = Field(description="The tool called (at most 512 bytes).")
    jsonrpcId: str | int | None = Field(
        description="The JSON-RPC request id: an integer within +-2^53, else a string of at "
        "most 512 bytes (a larger integer id is its decimal text)."
    )


class BudgetRefusal(_Model):
    """The budget that refused a call (429 budget-exceeded)."""

    budget: Literal["calls", "rows", "writes"]
    role: str = Field(description="The role whose budget it is.")
    limit: str = Field(description="As the policy writes it: 60/min.")


class ClaimsRead(_Model):
    """The claims the decision read, recorded so that ``spangate policy replay`` can recompute
    it under another policy (never the token)."""

    claims: dict[str, Any] = Field(
        description="Each claim path the policy's roles test or its parameters are bound to "
        "(those of the shadow policy too, when one is set) -> the token's value, null when "
        "absent (sub and claims under act are in authenticationInfo); a claim bound to a "
        "redacted parameter as redacted:hmac-sha256:<hex> (an array element by element); "
        "strings at most 512 bytes, a value null when dropped for the event's size (see "
        "truncated)."
    )
    groups: dict[str, bool] | None = Field(
        description="Each group a role names (a keyed hash when audit.redact names "
        "claim.groups) -> whether the principal holds it; never its other groups (null: none "
        "named)."
    )
    scopes: dict[str, bool] | None = Field(
        description="Each scope a role names (a keyed hash when audit.redact names "
        "claim.scopes) -> whether the principal holds it (null: none named)."
    )


class ShadowDecision(_Model):
    """The shadow policy's decision (``spangate serve --shadow-policy``), where it differs from
    the live one; the answer was the live policy's."""

    allow: bool
    reason: str = Field(description="allowed, or the stable reason code.")
    rule: str | None = Field(description="The role that allowed or denied under the shadow.")
    query: str | None = Field(description="The query the shadow would run.")
    params: list[str] | None = Field(
        description="The bound parameters whose values differ (names only), or null."
    )
    masked: list[str] = Field(
        default_factory=list,
        description="The result columns the shadow would mask for this caller (names only).",
    )
    approval: bool = Field(
        False,
        description="Whether the shadow would make this call wait for an approval (allowed, to "
        "a route with approval:).",
    )
    policySha256: str = Field(pattern=_HEX64)


class PaginationInfo(_Model):
    """A call to a paginated query (docs/pagination.md): what became of its cursor. Never the
    cursor nor anything it holds."""

    cursor: Literal["none", "opened", "refused", "not-checked"] = Field(
        description="none: no cursor (a first page); opened; refused (400 cursor-invalid or "
        "cursor-expired, see refused); not-checked: sent with a call refused before it was "
        "opened."
    )
    refused: Literal["malformed", "unknown-key", "unauthentic", "params", "expired"] | None = (
        Field(
            None,
            description="Why a cursor was refused: malformed (no cursor), unknown-key (sealed by "
            "a key no longer, or never, listed), unauthentic (tampered with, or sealed for "
            "another principal or query), params (other parameters), expired.",
        )
    )
    pageSize: int | None = Field(description="The page size asked (or the default).")
    nextCursor: bool = Field(description="Whether the answer carried next_cursor.")


class Requester(_Model):
    iss: str
    sub: str
    actors: list[str] = Field(description="act.sub of a delegated token, the current first.")


class ApprovalInfo(_Model):
    """A step of an approval (docs/approvals.md); the id links every step's event."""

    id: str | None = Field(
        pattern=r"^[0-9a-f]{32}$", description="The approval id (null: a list of several)."
    )
    event: Literal[
        "approval.requested",
        "approval.approved",
        "approval.rejected",
        "approval.presented",
        "approval.viewed",
        "approval.listed",
    ] = Field(
        description="requested: an allowed call answered 202 approval-required; approved, "
        "rejected: an approver's decision (POST /approvals/{id}/approve|reject, refused ones "
        "too); presented: a call repeated with Approval-Id (used says whether its statement ran "
        "under it); viewed: GET /approvals/{id}; listed: GET /approvals."
    )
    used: bool | None = Field(
        None,
        description="presented: whether this call used the approval (a write: it committed; a "
        "read: its claim committed, before the read ran).",
    )
    route: str | None = Field(None, description="METHOD /template of the request's route.")
    query: str | None = None
    requester: Requester | None = Field(None, description="On an approver's events.")
    role: str | None = Field(None, description="The approver role that held.")
    reason: str | None = Field(None, description="An approver's reason (at most 512 bytes).")
    expiresAt: str | None = Field(None, description="When the request or approval expires.")
    state: str | None = Field(None, description="listed: the state asked for.")
    count: int | None = Field(None, ge=0, description="listed: how many were answered.")
    cursor: bool | None = Field(
        None,
        description="listed: whether the call gave a cursor (?cursor=: a later page); never "
        "the cursor itself.",
    )
    nextCursor: bool | None = Field(
        None, description="listed: whether the answer carried next_cursor (there were more)."
    )


class Metadata(_Model):
    decision: Decision
    transport: Literal["http", "mcp"] = Field(
        "http", description="How the call came: an HTTP route, or an MCP tools/call at /mcp."
    )
    mcp: McpCall | None = Field(None, description="Only on the event of an MCP tools/call.")
    budget: BudgetRefusal | None = Field(
        None, description="Only on the event of a call refused by a budget (budget-exceeded)."
    )
    masked: list[str] | None = Field(
        None,
        description="Only on the event of an allowed call to a query with column masks: the "
        "result columns masked for this caller (its other masked columns it saw clear, through "
        "an unless role). Column names only; row values are never in the trail.",
    )
    pagination: PaginationInfo | None = Field(
        None, description="Only on the event of a call to a paginated query."
    )
    policySha256: str | None
    truncated: list[Truncation] = Field(
        description="Values cut to 512 bytes or dropped to fit SPANGATE_AUDIT_MAX_EVENT_BYTES."
    )
    settlement: Settlement | None = Field(
        None, description="Only on the follow-up event of a write answered with outcome unknown."
    )
    claimsRead: ClaimsRead | None = Field(
        None, description="On every event with a principal (authenticationInfo)."
    )
    shadow: ShadowDecision | None = Field(
        None, description="Only when a shadow policy is set and decided otherwise."
    )
    approval: ApprovalInfo | None = Field(
        None, description="Only on a step of an approval (docs/approvals.md)."
    )


class AuditLog(_Model):
    type_: Literal["type.googleapis.com/google.cloud.audit.AuditLog"] = Field(alias="@type")
    serviceName: Literal["spangate"]
    methodName: str | None = Field(description="The query, when a route matched.")
    resourceName: str | None = Field(description="projects/P/instances/I/databases/D")
    authenticationInfo: AuthenticationInfo | None
    authorizationInfo: list[AuthorizationInfo]
    requestMetadata: RequestMetadata
    request: Statement | None = Field(description="The statement, when a route matched.")
    response: Response | None = Field(description="When a statement ran.")
    status: Status
    metadata: Metadata


class AuditEvent(_Model):
    """One request's audit event (spangate, version 1): a Cloud Audit Logs LogEntry."""

    insertId: str = Field(pattern=r"^[0-9a-f]{32}$", description="Unique per event.")
    timestamp: str = Field(pattern=_TIME, description="RFC 3339, UTC, microseconds.")
    severity: Literal["INFO", "WARNING", "ERROR"]
    logName: str | None
    trace: str | None = Field(pattern=r"^[0-9a-f]{32}$")
    spanId: str | None = Field(pattern=r"^[0-9a-f]{16}$")
    httpRequest: HttpRequest
    protoPayload: AuditLog
    chain: str = Field(pattern=r"^[0-9a-f]{16}$", description="The writing process's chain id.")
    seq: int = Field(ge=1, description="1, 2, 3… within a chain.")
    prev: str = Field(
        pattern=_HEX64, description="The previous event's hash (or the predecessor's, or zeros)."
    )
    hash: str = Field(pattern=_HEX64, description="HMAC-SHA256 (or SHA-256) of the rest.")
    worker: int | None = Field(
        None,
        ge=1,
        description="The worker (1 to N) whose chain this is, under `spangate serve --workers N`; "
        "absent with one process.",
    )


def event_json_schema() -> dict[str, Any]:
    schema = AuditEvent.model_json_schema(by_alias=True)
    return {"$schema": _DIALECT, "$id": SCHEMA_ID, **schema, "title": "spangate audit event, v1"}


def render() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
