"""The audit record: built from plain values (pure). Never contains the token."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
from collections.abc import Collection, Mapping
from typing import Any

from gateway.auth.principal import Principal
from gateway.policy.types import SpannerTimestamp
from gateway.spanner.results import to_json

__all__ = ["audit_value", "principal_record", "params_record", "utc_now"]


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
