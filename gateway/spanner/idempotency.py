"""``Idempotency-Key`` for writes: a retried write returns the first response and applies nothing.

Contract:

- A write (DML) request may carry one ``Idempotency-Key`` header: 1 to 255 printable ASCII
  characters (else 400 ``idempotency-key-invalid``). Reads ignore it (they change nothing).
- The key is scoped to the caller: the record's primary key is SHA-256 over the token's issuer,
  subject and the key, so two callers never see or block each other's keys. The request's
  fingerprint is SHA-256 over the route (method and template), the query and every bound
  parameter (claim-bound ones included), in a canonical JSON form.
- Inside the write's own read-write transaction the gateway reads the record by its key (which
  locks it):
  none, or an expired one -> the statement runs and the record (fingerprint, the response body,
  the commit timestamp, the expiry) is written in the same transaction, so the record exists iff
  the write committed; the same fingerprint -> the stored response is returned, nothing runs;
  another fingerprint -> 422 ``idempotency-key-reused``, nothing runs. Two concurrent requests
  with one key serialise on the record's lock (one commits; the other aborts, is retried by the
  client library, then finds the record).
- A keyed write refused by its budget (429) reads the record in a read-only snapshot instead
  (``Executor.stored_answer``): the same fingerprint -> the stored response (a replay, nothing
  spent); else the 429. A retry of a write that spent the budget can always learn its outcome.
- Records expire ``SPANGATE_IDEMPOTENCY_TTL_SECONDS`` after their write (default 24 h): an expired
  record counts as absent and is overwritten; Spanner's row deletion policy removes old ones.
- The table ships as ``DDL`` (``PG_DDL`` in a PostgreSQL-dialect database: the same names,
  quoted, so reads and mutations name it alike in both; ``spangate init-db`` applies it). Each
  writing identity needs SELECT, INSERT and UPDATE on it (``spangate grants`` includes them).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth.principal import Principal
from gateway.errors import BadRequest, GatewayError
from gateway.policy.compiled import CompiledRoute
from gateway.policy.sqltoken import POSTGRESQL, Dialect
from gateway.policy.types import SpannerTimestamp
from gateway.spanner.results import Result

__all__ = [
    "DDL",
    "HEADER",
    "TABLE",
    "IdempotencyKey",
    "LOOKUP_SQL",
    "PG_DDL",
    "PG_LOOKUP_SQL",
    "ddl",
    "lookup_sql",
    "KeyReused",
    "Stored",
    "key_for",
    "lookup",
    "parse_key",
    "request_key",
    "store",
]

HEADER = b"idempotency-key"
TABLE = "SpangateIdempotency"
MAX_KEY_LENGTH = 255

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  KeyHash STRING(64) NOT NULL,
  RequestHash STRING(64) NOT NULL,
  Response STRING(MAX) NOT NULL,
  CommittedAt TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
  ExpiresAt TIMESTAMP NOT NULL,
) PRIMARY KEY (KeyHash),
  ROW DELETION POLICY (OLDER_THAN(ExpiresAt, INTERVAL 0 DAY))""",
)

PG_DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS "{TABLE}" (
  "KeyHash" varchar(64) NOT NULL,
  "RequestHash" varchar(64) NOT NULL,
  "Response" text NOT NULL,
  "CommittedAt" spanner.commit_timestamp NOT NULL,
  "ExpiresAt" timestamptz NOT NULL,
  PRIMARY KEY ("KeyHash")
) TTL INTERVAL '0 days' ON "ExpiresAt\"""",
)

_COLUMNS = ("KeyHash", "RequestHash", "Response", "CommittedAt", "ExpiresAt")
LOOKUP_SQL = (
    f"SELECT RequestHash, Response, CommittedAt FROM {TABLE} "  # noqa: S608 - constant names only
    "WHERE KeyHash = @key AND ExpiresAt > CURRENT_TIMESTAMP()"
)
PG_LOOKUP_SQL = (  # its parameter is p1
    f'SELECT "RequestHash", "Response", "CommittedAt" FROM "{TABLE}" '  # noqa: S608
    'WHERE "KeyHash" = $1 AND "ExpiresAt" > CURRENT_TIMESTAMP'
)


def ddl(dialect: Dialect) -> tuple[str, ...]:
    """The table's DDL in ``dialect``."""
    return PG_DDL if dialect == POSTGRESQL else DDL


def lookup_sql(dialect: Dialect) -> tuple[str, str]:
    """The record's lookup by key in ``dialect`` (what the analysis plans), and its parameter."""
    return (PG_LOOKUP_SQL, "p1") if dialect == POSTGRESQL else (LOOKUP_SQL, "key")


class KeyReused(GatewayError):
    """The key was used before by this caller for a different request."""

    status = 422
    code = "idempotency-key-reused"
    title = "Unprocessable content"


@dataclass(frozen=True)
class IdempotencyKey:
    key_hash: str  # the record's primary key: hex SHA-256 of (iss, sub, key)
    request_hash: str  # hex SHA-256 of the canonical request
    ttl_seconds: float


@dataclass(frozen=True)
class Stored:
    request_hash: str
    result: Result


def parse_key(values: Sequence[bytes]) -> str | None:
    """The Idempotency-Key header's value, None when absent; BadRequest when malformed."""
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("send one Idempotency-Key header", code="idempotency-key-invalid")
    raw = values[0]
    if not 0 < len(raw) <= MAX_KEY_LENGTH or not all(0x20 <= b <= 0x7E for b in raw):
        raise BadRequest(
            f"the Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            code="idempotency-key-invalid",
        )
    return raw.decode("ascii")


def canonical_request(method: str, route: str, query: str, values: Mapping[str, Any]) -> str:
    """A call's method, route template, query and bound values as canonical JSON (ASCII): what
    an Idempotency-Key's request fingerprint and an approval's request digest are taken of."""
    return json.dumps(
        {
            "method": method,
            "route": route,
            "query": query,
            "params": {k: canonical(v) for k, v in sorted(values.items())},
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )


def canonical(value: Any) -> Any:
    """A bound (typed) parameter value -> a JSON value that differs whenever the value does."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, decimal.Decimal):
        return {"numeric": format(value.normalize(), "f")}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, SpannerTimestamp):
        return {"timestamp": value.rfc3339()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, Mapping):  # a JSON parameter's object
        return {"json": {str(k): canonical(v) for k, v in value.items()}}
    return {"other": str(value)}


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def key_for(
    key: str,
    *,
    issuer: str,
    subject: str,
    method: str,
    route: str,
    query: str,
    values: Mapping[str, Any],
    ttl_seconds: float,
) -> IdempotencyKey:
    """The record key and request fingerprint of one write (pure)."""
    request = canonical_request(method, route, query, values)
    return IdempotencyKey(
        key_hash=_sha256("spangate-idempotency-v1", issuer, subject, key),
        request_hash=_sha256("spangate-request-v1", request),
        ttl_seconds=ttl_seconds,
    )


def request_key(
    headers: Sequence[tuple[bytes, bytes]],
    principal: Principal | None,
    route: CompiledRoute,
    values: Mapping[str, Any],
    *,
    ttl_seconds: float,
) -> IdempotencyKey | None:
    """The Idempotency-Key of a request to ``route``: None for reads and when there is none."""
    if not route.query.is_dml:
        return None
    key = parse_key([v for k, v in headers if k == HEADER])
    if key is None or principal is None:
        return None
    return key_for(
        key,
        issuer=principal.iss,
        subject=principal.subject,
        method=route.model.method,
        route=route.template,
        query=route.query_name,
        values=values,
        ttl_seconds=ttl_seconds,
    )


def _stored_body(result: Result) -> str:
    return json.dumps(
        {
            "columns": result.columns,
            "types": result.types,
            "rows": result.rows,
            "row_count": result.row_count,
            "truncated": result.truncated,
        },
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


async def lookup(transaction: Any, key: IdempotencyKey, *, now: dt.datetime) -> Stored | None:
    """The live record of ``key``, read in ``transaction`` by its primary key (a point read: no
    SQL to compile; a read-write transaction locks it, a read-only snapshot does not), or None
    when there is none or it expired before ``now``."""
    from google.cloud.spanner_v1 import KeySet

    from gateway.spanner.results import to_json

    results = await transaction.read(
        TABLE,
        ("RequestHash", "Response", "CommittedAt", "ExpiresAt"),
        KeySet(keys=[[key.key_hash]]),  # type: ignore[no-untyped-call]
        request_options={"request_tag": "spangate idempotency lookup"},
    )
    rows = [row async for row in results]
    if not rows or rows[0][3] <= now:
        return None
    request_hash, response, committed_at, _ = rows[0]
    body = json.loads(response)
    result = Result(
        columns=list(body["columns"]),
        types=[str(t) for t in body.get("types", ())],  # absent in records of older gateways
        rows=list(body["rows"]),
        row_count=int(body["row_count"]),
        truncated=bool(body["truncated"]),
        commit_timestamp=to_json(committed_at),
        is_dml=True,
        replayed=True,
    )
    return Stored(request_hash=str(request_hash), result=result)


def store(transaction: Any, key: IdempotencyKey, result: Result, *, now: dt.datetime) -> None:
    """Buffer the record of a write in its transaction (a mutation: applied at its commit)."""
    from google.cloud.spanner_v1 import COMMIT_TIMESTAMP

    transaction.insert_or_update(
        table=TABLE,
        columns=_COLUMNS,
        values=[
            (
                key.key_hash,
                key.request_hash,
                _stored_body(result),
                COMMIT_TIMESTAMP,
                now + dt.timedelta(seconds=key.ttl_seconds),
            )
        ],
    )
