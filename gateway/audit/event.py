"""The audit record, shaped as a Google Cloud Audit Logs ``LogEntry`` (pure: plain values in and out).

One event per request, whatever happened. The shape (``policies/audit-event.schema.json``) is a
LogEntry whose ``protoPayload`` is an ``AuditLog``, so Cloud Logging, BigQuery and SIEMs that read
Cloud Audit Logs read it as they are:

    insertId, timestamp, severity, logName, trace, spanId      the entry
    httpRequest        method, path (raw, as routed; a segment a route binds to a redacted
                       parameter as its keyed hash), status, user agent, client address, latency
    protoPayload       serviceName "spangate", methodName (the query), resourceName (the database)
      authenticationInfo   the principal: subject, issuer, client, user, token id; ``act``
                           delegation as serviceAccountDelegationInfo (current actor first)
      authorizationInfo    the route and query, granted or not
      requestMetadata      caller IP, request id and time
      request              the statement: query, identity, database role, request tag, bound
                           parameters (``from`` claim or caller; redacted ones as a keyed hash),
                           caller values ignored for claim-bound parameters (also when refused)
      response             row count, truncated, commit timestamp, Spanner error code; for a
                           write its outcome (committed, not-committed, unknown)
      status               google.rpc code and the stable error code (``ok`` when allowed)
      metadata             decision (allow, reason, rule, roles that held), policy hash, what
                           was truncated, transport (http or mcp; for mcp the tool and the
                           JSON-RPC id); ``masked``: the result columns masked for this caller
                           (never a row value); ``pagination``: whether a cursor was presented,
                           opened or refused (and why), the page size, whether a next cursor
                           was answered (never a cursor or its values); ``settlement`` on the
                           follow-up event of a write answered while its Commit was in flight
                           (see ``recorder.settle_hook``); ``claimsRead``: the claims the
                           decision read (``policy.reads``: what ``spangate policy replay``
                           recomputes a decision from; claims bound to redacted parameters as
                           keyed hashes); ``shadow``: the shadow policy's decision, when it
                           differs from the live one; ``approval``: the approval a call
                           requested, decided, listed or presented (``gateway.approvals``)
    chain, seq, prev, hash   added by each sink's writer when the event is sealed

Never the token. Each string a caller supplies is stored once, bounded (``bounds``): the user agent
and the path only in ``httpRequest``.

A token's ``authenticationInfo`` and the ``claimsRead`` groups and scopes are built once and the
same objects put in every event that repeats them (``shared``): what changes a built event (a
settlement's follow-up, the row written in a write's transaction) changes only its own top level,
``httpRequest``, ``response`` and ``metadata``, never those.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from gateway.audit.bounds import DEFAULT_MAX_EVENT_BYTES, Bounds, fit_encoded, pointer
from gateway.audit.chain import Members
from gateway.audit.shared import SharedBlocks
from gateway.auth.presets import effective_names
from gateway.auth.principal import MISSING, Principal
from gateway.errors import GatewayError, SpannerError
from gateway.policy.bind import Bound
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision
from gateway.policy.reads import ClaimReads
from gateway.policy.redaction import redacted_segments
from gateway.policy.types import json_value
from gateway.spanner.execute import Result
from gateway.spanner.results import to_json
from gateway.timestamps import utc_now

__all__ = [
    "AUDIT_LOG_TYPE",
    "CallRecord",
    "build_event",
    "build_event_encoded",
    "database_resource",
    "fallback_event",
    "redacted",
    "redacted_claim",
    "request_url",
    "rpc_code",
    "utc_now",
    "write_outcome",
]

AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
SERVICE = "spangate"

# google.rpc.Code for an HTTP status, as Google's APIs map them (codes first, then statuses).
_RPC_BY_CODE = {
    "conflict": 6,
    "precondition-failed": 9,
    "parent-row-missing": 9,  # Spanner says NOT_FOUND; the caller's write fails a precondition
    "aborted": 10,
    "cancelled": 1,
}
_RPC_BY_STATUS = {
    200: 0, 400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 408: 4, 409: 10, 413: 3, 415: 3, 429: 8,
    431: 3, 499: 1, 500: 13, 501: 12, 503: 14, 504: 4,
}  # fmt: skip


def rpc_code(status: int, code: str) -> int:
    if code in _RPC_BY_CODE:
        return _RPC_BY_CODE[code]
    if status in _RPC_BY_STATUS:
        return _RPC_BY_STATUS[status]
    return 13 if status >= 500 else 3 if status >= 400 else 0


def database_resource(project: str, instance: str, database: str) -> str:
    return f"projects/{project}/instances/{instance}/databases/{database}"


def redacted(value: Any, key: bytes | None) -> str:
    """``redacted:hmac-sha256:<hex>`` (keyed) or ``redacted:sha256:<hex>`` of the value's JSON.

    Equal values give equal hashes, so a security team can still correlate them; with a key, no
    one without it can test a guess."""
    data = json.dumps(json_value(value), sort_keys=True, separators=(",", ":")).encode()
    if key:
        return "redacted:hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()
    return "redacted:sha256:" + hashlib.sha256(data).hexdigest()


def _number(value: Any) -> Any:
    # 1.0 and 1 are the same claim value to a role's test: they hash alike
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def redacted_claim(value: Any, key: bytes | None) -> Any:
    """A claim bound to a redacted parameter, as the trail records it: ``redacted`` of the value
    (an integral number as an integer), an array element by element (a role's test holds when
    any element equals, which the hashes still tell: ``spangate policy replay`` hashes the
    policy's values with the same key), null as null."""
    if value is None:
        return None
    if isinstance(value, list):
        return [redacted(_number(v), key) for v in value]
    return redacted(_number(value), key)


_AUTH = pointer("protoPayload", "authenticationInfo")


def _delegation(
    act: Mapping[str, Any] | None, bounds: Bounds, redact: frozenset[str], key: bytes | None
) -> list[dict[str, Any]]:
    """RFC 8693 ``act`` (nested for a chain) -> the actors, the current one first. An actor's
    claim bound to a redacted parameter (``redact``: ``ClaimReads.redacted``, ``act.email``)
    is its keyed hash, as the parameter is (a claim in which such a path lies: all of it)."""
    chain: list[dict[str, Any]] = []
    node: Any = act
    while isinstance(node, Mapping) and len(chain) < 16:
        where = _AUTH + pointer("serviceAccountDelegationInfo", len(chain))
        prefix = "act." * (len(chain) + 1)
        claims = {
            k: redacted_claim(to_json(v), key) if _hidden(prefix + k, redact) else to_json(v)
            for k, v in node.items()
            if k not in ("sub", "act")
        }
        sub = node.get("sub")
        entry: dict[str, Any] = {
            "principalSubject": bounds.text(
                where + "/principalSubject", sub if isinstance(sub, str) else None
            )
        }
        if claims:
            third_party: dict[str, Any] = {}
            bounds.put(
                third_party,
                "thirdPartyClaims",
                where + "/thirdPartyPrincipal/thirdPartyClaims",
                claims,
            )
            entry["thirdPartyPrincipal"] = third_party
        chain.append(entry)
        node = node.get("act")
    return chain


def _hidden(path: str, redact: frozenset[str]) -> bool:
    return path in redact or any(r.startswith(path + ".") for r in redact)


def _accepted(principal: Principal, policy: CompiledPolicy) -> list[str] | None:
    """The token's audiences its issuer accepts (for replay under a candidate whose issuer may
    take others); None when the token has no ``aud`` (an introspection answer may not)."""
    aud = principal.claims.get("aud")
    given = [aud] if isinstance(aud, str) else aud
    issuer = policy.model.issuers.get(principal.issuer)
    if not isinstance(given, list) or issuer is None:
        return None
    return sorted({a for a in given if isinstance(a, str)} & set(issuer.audiences))


def _claim_names(principal: Principal, policy: CompiledPolicy) -> dict[str, str | None] | None:
    """The claims the issuer read groups and scopes from (for replay under a candidate whose
    issuer maps them otherwise)."""
    issuer = policy.model.issuers.get(principal.issuer)
    if issuer is None:
        return None
    names = effective_names(issuer, principal.introspected)
    return {"groups": names.groups, "scopes": names.scopes}


def _authentication(
    principal: Principal,
    policy: CompiledPolicy,
    bounds: Bounds,
    reads: ClaimReads,
    key: bytes | None,
) -> dict[str, Any]:
    """``authenticationInfo``: built once per token and policy and shared (``shared``) when it
    names no actor and nothing in it was cut."""
    shared_key = _token_key(principal) if bounds.plain else None
    if shared_key is None:
        return _build_authentication(principal, policy, bounds, reads, key)
    blocks = SharedBlocks.of(policy)
    block: dict[str, Any] | None = blocks.get(shared_key)
    if block is None:
        mark = bounds.mark()
        block = _build_authentication(principal, policy, bounds, reads, key)
        if bounds.mark() == mark:
            blocks.put(shared_key, block)
    return block


def _token_key(principal: Principal) -> tuple[Any, ...] | None:
    """What ``authenticationInfo`` is made of, or None when it may not be shared: the token names
    an actor (``act``: its claims are bounded values, which may be dropped), or a value is not of
    its usual type (a ``str`` or None; equal values of other types, ``1`` and ``True``, may
    encode apart). The audiences as a tuple (of a list of strings)."""
    claims = principal.claims
    if "act" in claims:
        return None
    aud = claims.get("aud")
    if type(aud) is list:
        aud = tuple(aud)
        for one in aud:
            if type(one) is not str:
                return None
    elif aud is not None and type(aud) is not str:
        return None
    key = (
        principal.issuer,
        principal.iss,
        principal.subject,
        principal.client_id,
        principal.user_id,
        principal.token_id,
    )
    for value in key:
        if value is not None and type(value) is not str:
            return None
    if type(principal.introspected) is not bool:
        return None
    return ("authenticationInfo", *key, principal.introspected, aud)


def _build_authentication(
    principal: Principal,
    policy: CompiledPolicy,
    bounds: Bounds,
    reads: ClaimReads,
    key: bytes | None,
) -> dict[str, Any]:
    # Shared when it may be (``_authentication``): each value of ``principal`` read here (but
    # ``act``) is one of ``_token_key``'s.
    third = _AUTH + "/thirdPartyPrincipal/"
    return {
        "principalSubject": bounds.text(_AUTH + "/principalSubject", principal.subject),
        "thirdPartyPrincipal": {
            "issuer": principal.issuer,
            "iss": bounds.text(third + "iss", principal.iss),
            "clientId": bounds.text(third + "clientId", principal.client_id),
            "userId": bounds.text(third + "userId", principal.user_id),
            "tokenId": bounds.text(third + "tokenId", principal.token_id),
            "audience": _accepted(principal, policy),
            "introspected": principal.introspected,
            "claimNames": _claim_names(principal, policy),
        },
        "serviceAccountDelegationInfo": _delegation(principal.act, bounds, reads.redacted, key),
    }


@dataclass
class CallRecord:
    """What the audit event needs to know about one request, filled in as it goes."""

    request_id: str
    method: str
    path: str  # the raw path as routed: still percent-encoded, without the query string
    started: float  # time.perf_counter() at arrival
    client: str | None  # already resolved through the trusted proxies
    user_agent: str | None
    principal: Principal | None = None
    decision: Decision | None = None
    result: Result | None = None
    error: GatewayError | None = None
    status: int = 500
    trace: str | None = None
    span: str | None = None
    request_tag: str | None = None
    received: str = field(default_factory=utc_now)
    insert_id: str = field(default_factory=lambda: secrets.token_hex(16))
    extra: dict[str, Any] = field(default_factory=dict)
    transport: str = "http"  # or "mcp": a tools/call at /mcp (``gateway.mcp``)
    tool: str | None = None  # the MCP tool called
    jsonrpc_id: str | int | None = None  # the MCP request's JSON-RPC id
    reads: ClaimReads | None = None  # the claims to record (else the policy's own reads)
    shadow: dict[str, Any] | None = None  # the shadow decision, when it differs (``shadow.py``)
    # Approvals (``gateway.approvals``): ``metadata.approval`` of the event; the stable code and
    # status of an answer that is no error and no plain 200 (202 ``approval-required``); the
    # authorizationInfo of a call to /approvals (no route).
    approval: dict[str, Any] | None = None
    answer_code: str | None = None
    answer_status: int = 200
    authorization: list[dict[str, Any]] | None = None

    @property
    def write(self) -> bool:
        """Did (or would) this request run DML? Writes get strict durability by default."""
        route = self.decision.route if self.decision else None
        return bool(route is not None and route.query.is_dml)


def _severity(status: int) -> str:
    return "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"


_REQUEST = pointer("protoPayload", "request")


@functools.lru_cache(maxsize=4096)
def _where(prefix: str, *parts: str) -> str:
    """``prefix + pointer(*parts)`` for names the policy defines (parameters, claim paths: a
    bounded set), made once each: never for a caller's keys."""
    return prefix + pointer(*parts)


def _statement(
    call: CallRecord, policy: CompiledPolicy, key: bytes | None, bounds: Bounds
) -> dict[str, Any] | None:
    decision = call.decision
    route = decision.route if decision else None
    if route is None:
        return None
    query = route.query
    identity = query.model.identity
    identity_model = policy.model.identities.get(identity)
    statement: dict[str, Any] = {
        "query": query.name,
        "identity": identity,
        "databaseRole": identity_model.database_role if identity_model else None,
        "requestTag": call.request_tag,
        "params": None,
        "ignoredCallerValues": None,
    }
    redact = policy.model.audit.redact  # a handful of names
    bound = decision.bound if decision else None
    if bound is not None:
        params: dict[str, dict[str, Any]] = {}
        statement["params"] = params
        for name, value in bound.values.items():
            if name in bound.cursor_bound:  # the cursor's values are never recorded
                params[name] = {"from": "cursor", "value": None}
                continue
            entry: dict[str, Any] = {"from": "claim" if name in bound.claim_bound else "caller"}
            params[name] = entry
            if name in bound.defaulted:
                entry["defaulted"] = True
            if name in redact and name in bound.claim_bound and isinstance(value, list):
                # an array claim: element by element, as claimsRead records the claim
                entry["value"] = redacted_claim(json_value(value), key)
            elif name in redact:
                entry["value"] = redacted(value, key)
            else:
                where = _where(_REQUEST, "params", name, "value")
                bounds.put(entry, "value", where, json_value(value))
                _sent(entry, name, bound, bounds)
    if decision is not None and decision.ignored:  # recorded whether the request was allowed or not
        statement["ignoredCallerValues"] = ignored = {}
        for name, value in decision.ignored.items():
            if name in redact:
                ignored[name] = redacted(value, key)
            else:
                where = _where(_REQUEST, "ignoredCallerValues", name)
                bounds.put(ignored, name, where, to_json(value))
    return statement


def _sent(entry: dict[str, Any], name: str, bound: Bound, bounds: Bounds) -> None:
    """What the caller sent, where ``coerce`` changed its form (``"5"`` bound as 5): a candidate
    of another type checks what was sent (``spangate policy replay``). ``text``: a path or
    query-string value. Never for a redacted parameter (its hash is all the trail holds)."""
    if name not in bound.sent or name in bound.claim_bound:
        return
    raw, text = bound.sent[name]
    value = entry.get("value")
    if _plain(raw) and _plain(value):  # the usual case: a path or query-string value
        if type(raw) is type(value) and raw == value:
            return
    else:
        raw = to_json(raw)
        if _canonical(raw) == _canonical(value):
            return
    bounds.put(entry, "sent", _where(_REQUEST, "params", name, "sent"), raw)
    if text:
        entry["text"] = True


def _plain(value: Any) -> bool:
    """A ``str``, or an ``int`` of at most 64 bits (not a subclass): two such values have the same
    ``_canonical`` text exactly when they are of one type and equal (and ``to_json`` of one is
    itself), so ``_sent`` compares them without encoding them."""
    kind = type(value)
    return kind is str or (kind is int and value.bit_length() <= 64)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def write_outcome(call: CallRecord) -> str | None:
    """A write's outcome as far as the gateway knows: ``committed`` (a commit timestamp),
    ``not-committed`` or ``unknown`` (the executor's word on a failed write); None for a read."""
    if not call.write:
        return None
    if call.result is not None and call.result.commit_timestamp is not None:
        return "committed"
    if isinstance(call.error, SpannerError):
        return call.error.outcome
    outcome = call.error.extra.get("outcome") if call.error is not None else None
    return outcome if isinstance(outcome, str) else None


def build_event(
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None = None,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> dict[str, Any]:
    """The event of ``call`` (``key``: the redaction key; ``database``: the resource name), its
    line at most ``max_bytes`` long as far as shrinking caller values can make it (``bounds``)."""
    return build_event_encoded(call, policy, key=key, database=database, max_bytes=max_bytes)[0]


def build_event_encoded(
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None = None,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> tuple[dict[str, Any], Members | None]:
    """``build_event``, and its top-level members as bounding it encoded them, for sealing
    (``AuditTrail.record(members=...)``): valid only while the event is not changed."""
    latency = time.perf_counter() - call.started
    return fit_encoded(
        lambda bounds: _event(call, policy, key, database, latency, bounds), max_bytes
    )


def request_url(call: CallRecord, policy: CompiledPolicy, key: bytes | None) -> str:
    """The path the event records: as received, but each segment that a route binds to a
    parameter ``audit.redact`` names is its keyed hash (``redacted``: of the bound value, as
    ``request.params`` records it, else of the percent-decoded segment)."""
    if call.transport != "http":
        return call.path
    decision = call.decision
    found = redacted_segments(policy, call.path, decision.route if decision else None)
    if not found:
        return call.path
    bound = decision.bound.values if decision is not None and decision.bound is not None else {}
    parts = call.path.split("/")
    for index, name in found.items():
        parts[index] = redacted(bound[name] if name in bound else unquote(parts[index]), key)
    return "/".join(parts)


def _http_request(
    call: CallRecord, url: str, status: int, latency: float, bounds: Bounds
) -> dict[str, Any]:
    return {
        "requestMethod": bounds.text("/httpRequest/requestMethod", call.method),
        "requestUrl": bounds.text("/httpRequest/requestUrl", url),
        "status": status,
        "userAgent": bounds.text("/httpRequest/userAgent", call.user_agent),
        "remoteIp": call.client,
        "latency": f"{latency:.6f}s",
    }


def _request_metadata(call: CallRecord) -> dict[str, Any]:
    # The user agent and the path are in httpRequest: each caller-supplied string once.
    return {
        "callerIp": call.client,
        "requestAttributes": {"id": call.request_id, "time": call.received},
    }


def _event(
    call: CallRecord,
    policy: CompiledPolicy,
    key: bytes | None,
    database: str | None,
    latency: float,
    bounds: Bounds,
) -> dict[str, Any]:
    decision = call.decision
    route = decision.route if decision else None
    error = call.error
    code = error.code if error else (call.answer_code or "ok")
    target = policy.model.spanner
    result = call.result
    spanner_code = error.spanner_code if isinstance(error, SpannerError) else None
    response: dict[str, Any] | None = None
    outcome = write_outcome(call)
    if result is not None or spanner_code is not None or outcome is not None:
        response = {
            "rowCount": result.row_count if result else None,
            "truncated": result.truncated if result else None,
            "commitTimestamp": result.commit_timestamp if result else None,
            "spannerCode": spanner_code,
        }
        if call.write:
            response["outcome"] = outcome
    return {
        "insertId": call.insert_id,
        "timestamp": utc_now(),
        "severity": _severity(call.status),
        "logName": f"projects/{target.project}/logs/spangate%2Faudit",
        "trace": call.trace,
        "spanId": call.span,
        "httpRequest": _http_request(
            call, request_url(call, policy, key), call.status, latency, bounds
        ),
        "protoPayload": {
            "@type": AUDIT_LOG_TYPE,
            "serviceName": SERVICE,
            "methodName": route.query_name if route else None,
            "resourceName": database
            or database_resource(target.project, target.instance, target.database),
            "authenticationInfo": _authentication(
                call.principal, policy, bounds, call.reads or policy.reads, key
            )
            if call.principal
            else None,
            "authorizationInfo": [
                {
                    "resource": f"{route.model.method} {route.template}",
                    "permission": route.query_name,
                    "granted": bool(decision and decision.allow),
                }
            ]
            if route
            else list(call.authorization or []),
            "requestMetadata": _request_metadata(call),
            "request": _statement(call, policy, key, bounds),
            "response": response,
            "status": {"code": rpc_code(call.status, code), "message": code},
            "metadata": {
                "decision": {
                    "allow": bool(decision and decision.allow),
                    "reason": decision.reason if decision else code,
                    "rule": decision.rule if decision else None,
                    "roles": sorted(decision.roles) if decision else [],
                },
                "policySha256": policy.sha256,
                "truncated": bounds.truncated,
                "transport": call.transport,
                **_mcp_call(call, bounds),
                **_budget(error),
                **_masked(decision),
                **_claims_read(call, call.reads or policy.reads, key, bounds),
                **({"shadow": call.shadow} if call.shadow is not None else {}),
                **_pagination(call),
                **_approval(call, bounds),
            },
        },
    }


_METADATA = pointer("protoPayload", "metadata")
_SAFE_INTEGER = 2**53  # JSON-RPC ids beyond +-2^53 are recorded as their decimal text


def _budget(error: GatewayError | None) -> dict[str, Any]:
    """Which budget refused the call (429 budget-exceeded): its kind, role and limit."""
    if error is None or error.code != "budget-exceeded":
        return {}
    return {"budget": {k: error.extra.get(k) for k in ("budget", "role", "limit")}}


def _masked(decision: Decision | None) -> dict[str, Any]:
    """An allowed call to a query with masks: the result columns masked for this caller (the
    others of its masks it saw clear, through an ``unless`` role). Names only, never values."""
    route = decision.route if decision is not None else None
    if decision is None or not decision.allow or route is None or not route.query.model.mask:
        return {}
    return {"masked": list(decision.masked)}


_CLAIMS_READ = _METADATA + "/claimsRead"


def _claims_read(
    call: CallRecord, reads: ClaimReads, key: bytes | None, bounds: Bounds
) -> dict[str, Any]:
    """``claimsRead``: the values of the claims ``reads`` names (null: absent), and whether the
    principal holds each group and scope a role names (``{name: bool}``; null: none named;
    each name its keyed hash when ``audit.redact`` names ``claim.groups``/``claim.scopes``). Each value is the
    token's, so bounded as a caller's (cut, or dropped for the event's size: listed in
    ``truncated``); a claim bound to a redacted parameter is its keyed hash. The claims under
    ``act`` are in ``authenticationInfo`` already (each actor's ``sub`` and other claims), and
    so is ``sub`` when it is the subject: each string once. Under a preset whose subject is
    another claim (``google``: the ``email``), ``sub`` is recorded here."""
    principal = call.principal
    if principal is None or not reads.recorded:
        return {}
    claims: dict[str, Any] = {}
    block: dict[str, Any] = {"claims": claims, "groups": None, "scopes": None}
    for path in reads.paths:
        if path.startswith("act.") or (
            path == "sub" and principal.claims.get("sub") == principal.subject
        ):
            continue
        value = principal.claim(path)
        if value is MISSING or value is None:
            claims[path] = None
        elif path in reads.redacted:
            hashed = redacted_claim(value, key)
            if isinstance(hashed, list):  # a hash per element: as droppable as any array
                bounds.put(claims, path, _where(_CLAIMS_READ, "claims", path), hashed)
            else:
                claims[path] = hashed
        else:
            bounds.put(claims, path, _where(_CLAIMS_READ, "claims", path), to_json(value))
    for kind, names, held in (
        ("groups", reads.groups, principal.groups),
        ("scopes", reads.scopes, principal.scopes),
    ):
        if names:  # whether the principal holds each name a role tests, never its others
            holds = names & held  # all the block depends on (a token may hold many more)
            block[kind] = (
                _held_hashed(names, holds, key) if kind in reads.redacted else _held(names, holds)
            )
    return {"claimsRead": block}


# ``{name: name in held}`` over ``names`` sorted (each name its keyed hash when ``audit.redact``
# names claim.groups or claim.scopes): the same for every call with these values, so made once
# and shared (``shared``): never changed.
@functools.lru_cache(maxsize=1024)
def _held(names: frozenset[str], held: frozenset[str]) -> dict[str, bool]:
    return {n: n in held for n in sorted(names)}


@functools.lru_cache(maxsize=1024)
def _held_hashed(names: frozenset[str], held: frozenset[str], key: bytes | None) -> dict[str, bool]:
    return {str(redacted_claim(n, key)): n in held for n in sorted(names)}


def _pagination(call: CallRecord) -> dict[str, Any]:
    """A call to a paginated query: its cursor (``none``: a first page; ``opened``; ``refused``
    with the reason, ``gateway.shaping.cursors.REFUSALS``; ``not-checked``: sent with a call
    refused before it was opened), the page size, whether a next cursor was answered. Never a
    cursor, nor anything it holds."""
    decision = call.decision
    route = decision.route if decision is not None else None
    if decision is None or route is None or route.query.paging is None:
        return {}
    recorded: dict[str, Any] | None = call.extra.get("pagination")
    if recorded is None:
        cursor = "none" if decision.cursor is None else "not-checked"
        recorded = {"cursor": cursor, "pageSize": None, "nextCursor": False}
    return {"pagination": dict(recorded)}


def _approval(call: CallRecord, bounds: Bounds) -> dict[str, Any]:
    """``approval``: the approval a call made, decided, listed or presented (its id links every
    step); an approver's reason is the caller's text, bounded."""
    if call.approval is None:
        return {}
    block = dict(call.approval)
    if isinstance(block.get("reason"), str):
        block["reason"] = bounds.text(_METADATA + "/approval/reason", block["reason"])
    return {"approval": block}


def _mcp_call(call: CallRecord, bounds: Bounds) -> dict[str, Any]:
    if call.transport != "mcp":
        return {}
    rpc_id = call.jsonrpc_id
    where = _METADATA + "/mcp/"
    if isinstance(rpc_id, int) and not -_SAFE_INTEGER <= rpc_id <= _SAFE_INTEGER:
        # beyond what a JSON reader keeps exact (IEEE doubles): its decimal text, bounded
        number = rpc_id
        try:
            rpc_id = str(number)
        except ValueError:  # more digits than Python converts (sys.set_int_max_str_digits)
            rpc_id = f"{'-' if number < 0 else ''}<an integer of {number.bit_length()} bits>"
    return {
        "mcp": {
            "tool": bounds.text(where + "tool", call.tool),
            "jsonrpcId": bounds.text(where + "jsonrpcId", rpc_id)
            if isinstance(rpc_id, str)
            else rpc_id,
        }
    }


def fallback_event(
    call: CallRecord,
    *,
    status: int,
    code: str,
    policy: CompiledPolicy,
    key: bytes | None,
) -> dict[str, Any]:
    """A minimal event for a request whose full event could not be built (a bug): still one
    event, with what is surely known (its path without redacted values: their segments hashed,
    or, when even that fails, the path's first segment and ``/...``)."""
    bounds = Bounds()
    latency = time.perf_counter() - call.started
    try:
        url = request_url(call, policy, key)
    except Exception:  # noqa: BLE001 - a bug already: record no more of the path than is safe
        url = "/".join(call.path.split("/")[:2]) + "/..."
    return {
        "insertId": call.insert_id,
        "timestamp": utc_now(),
        "severity": _severity(status),
        "logName": None,
        "trace": call.trace,
        "spanId": call.span,
        "httpRequest": _http_request(call, url, status, latency, bounds),
        "protoPayload": {
            "@type": AUDIT_LOG_TYPE,
            "serviceName": SERVICE,
            "methodName": None,
            "resourceName": None,
            "authenticationInfo": None,
            "authorizationInfo": [],
            "requestMetadata": _request_metadata(call),
            "request": None,
            "response": None,
            "status": {"code": rpc_code(status, code), "message": code},
            "metadata": {
                "decision": {"allow": False, "reason": code, "rule": None, "roles": []},
                "policySha256": policy.sha256,
                "truncated": bounds.truncated,
            },
        },
    }
