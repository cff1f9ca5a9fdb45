"""The audit record: built from plain values (pure). Never contains the token."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.principal import Principal
from gateway.errors import GatewayError, SpannerError
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision
from gateway.policy.types import SpannerTimestamp
from gateway.spanner.execute import Result
from gateway.spanner.results import to_json

__all__ = [
    "CallRecord",
    "audit_value",
    "build_event",
    "params_record",
    "principal_record",
    "utc_now",
]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_value(value: Any) -> Any:
    """A bound parameter value as JSON, in the same representation callers use."""
    if isinstance(value, SpannerTimestamp):
        return value.rfc3339()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return [audit_value(v) for v in value]
    return to_json(value)


def _redacted(value: Any, key: bytes | None) -> str:
    data = repr(audit_value(value)).encode()
    digest = (
        hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
    )
    return f"redacted:sha256:{digest}"


def params_record(
    values: Mapping[str, Any],
    *,
    claim_bound: Collection[str],
    redact: Collection[str],
    key: bytes | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        shown = _redacted(value, key) if name in redact else audit_value(value)
        out[name] = {"value": shown, "from": "claim" if name in claim_bound else "caller"}
    return out


def principal_record(principal: Principal, roles: Collection[str]) -> dict[str, Any]:
    return {
        "issuer": principal.issuer,
        "iss": principal.iss,
        "sub": principal.subject,
        "client_id": principal.client_id,
        "user_id": principal.user_id,
        "act": to_json(dict(principal.act)) if principal.act is not None else None,
        "token_id": principal.token_id,
        "roles": sorted(roles),
    }


@dataclass
class CallRecord:
    """What the audit event needs to know about one request, filled in as it goes."""

    request_id: str
    method: str
    path: str
    started: float
    client: str | None
    user_agent: str | None
    principal: Principal | None = None
    decision: Decision | None = None
    result: Result | None = None
    error: GatewayError | None = None
    status: int = 500
    extra: dict[str, Any] = field(default_factory=dict)


def build_event(call: CallRecord, policy: CompiledPolicy, *, key: bytes | None) -> dict[str, Any]:
    decision = call.decision
    route = decision.route if decision else None
    event: dict[str, Any] = {
        "time": utc_now(),
        "request_id": call.request_id,
        "policy_sha256": policy.sha256,
        "principal": principal_record(call.principal, decision.roles if decision else ())
        if call.principal
        else None,
        "request": {
            "method": call.method,
            "path": call.path,
            "route": route.template if route else None,
            "client_ip": call.client,
            "user_agent": call.user_agent,
        },
        "decision": {
            "allow": bool(decision and decision.allow),
            "reason": decision.reason if decision else (call.error.code if call.error else None),
            "rule": decision.rule if decision else None,
        },
        "statement": None,
        "outcome": {
            "status": call.status,
            "code": call.error.code if call.error else "ok",
            "row_count": call.result.row_count if call.result else None,
            "truncated": call.result.truncated if call.result else None,
            "commit_timestamp": call.result.commit_timestamp if call.result else None,
            "spanner_code": call.error.spanner_code
            if isinstance(call.error, SpannerError)
            else None,
        },
        "latency_ms": round((time.perf_counter() - call.started) * 1000, 3),
    }
    if route is not None:
        query = route.query
        identity = query.model.identity
        statement: dict[str, Any] = {
            "query": query.name,
            "identity": identity,
            "database_role": policy.model.identities[identity].database_role,
        }
        if decision is not None and decision.bound is not None:
            statement["params"] = params_record(
                decision.bound.values,
                claim_bound=decision.bound.claim_bound,
                redact=set(policy.model.audit.redact),
                key=key,
            )
            if decision.bound.ignored:
                statement["ignored_caller_values"] = {
                    k: (f"redacted:{len(str(v))} chars" if k in policy.model.audit.redact else v)
                    for k, v in decision.bound.ignored.items()
                }
        event["statement"] = statement
    return event
