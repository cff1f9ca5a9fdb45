"""The approvals table: approval requests, their decisions and their use, in the gateway's own
Spanner table (``spangate init-db`` creates it; ``gateway.approvals.record`` is its pure side).

Contract:

- One row per request, keyed by its random id. Every change is a read-write transaction that
  reads the row by key (locking it) and then buffers its update, so two approvers, or two
  replays, serialise on the row: one commits, the other is aborted, retried by the client
  library, and then finds the row changed.
- The use of an approval is marked in the transaction that runs its statement for DML (the row
  is read, checked and updated in the write's own read-write transaction: marked used if and
  only if the write commits), and for a read in a transaction of its own just before the read.
- Each identity that runs a query some route's ``approval`` guards reads and writes the table:
  ``spangate grants`` gives it SELECT, INSERT and UPDATE on it. Requests, decisions and the list
  run under the identity of the route's query.
- Rows go ``ROW_TTL_DAYS`` after they expired (Spanner's row deletion policy); the audit trail
  keeps the history.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from gateway.approvals.record import ApprovalRecord

__all__ = [
    "COLUMNS",
    "DDL",
    "LIST_SQL",
    "TABLE",
    "insert",
    "list_rows",
    "read",
    "update",
]

TABLE = "SpangateApprovals"
ROW_TTL_DAYS = 7

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  ApprovalId STRING(32) NOT NULL,
  State STRING(16) NOT NULL,
  Issuer STRING(MAX) NOT NULL,
  Iss STRING(MAX) NOT NULL,
  Subject STRING(MAX) NOT NULL,
  Actors ARRAY<STRING(MAX)> NOT NULL,
  Route STRING(MAX) NOT NULL,
  Query STRING(MAX) NOT NULL,
  RequestHash STRING(64) NOT NULL,
  Params STRING(MAX) NOT NULL,
  Approvers ARRAY<STRING(MAX)> NOT NULL,
  RequestId STRING(MAX) NOT NULL,
  CreatedAt TIMESTAMP NOT NULL,
  ExpiresAt TIMESTAMP NOT NULL,
  DecidedAt TIMESTAMP,
  DeciderIss STRING(MAX),
  DeciderSubject STRING(MAX),
  Reason STRING(MAX),
  UsedAt TIMESTAMP,
  UsedBy STRING(MAX),
  Scope STRING(64),
) PRIMARY KEY (ApprovalId),
  ROW DELETION POLICY (OLDER_THAN(ExpiresAt, INTERVAL {ROW_TTL_DAYS} DAY))""",
    # a table made before approval.match existed gains the column (init-db runs it every time;
    # a no-op once there). Its older rows have no Scope: only their requesters see them.
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS Scope STRING(64)",
    # the approvers' list reads by Scope and State, oldest first: one tenant's requests, however
    # many, are never scanned for another's list
    f"CREATE INDEX IF NOT EXISTS {TABLE}ByScope ON {TABLE} (Scope, State, CreatedAt)",
)

COLUMNS: tuple[str, ...] = (
    "ApprovalId", "State", "Issuer", "Iss", "Subject", "Actors", "Route", "Query",
    "RequestHash", "Params", "Approvers", "RequestId", "CreatedAt", "ExpiresAt", "DecidedAt",
    "DeciderIss", "DeciderSubject", "Reason", "UsedAt", "UsedBy", "Scope",
)  # fmt: skip
_SELECT = ", ".join(COLUMNS)
# Pending (or other) requests an approver may decide, oldest first: the approvers' list. A
# request's Scope digests its route and match values (``record.scope_hash``): the approver's
# scopes, one per route it may decide, select exactly the requests whose values it shares.
LIST_SQL = (
    f"SELECT {_SELECT} FROM {TABLE} "  # noqa: S608 - constant names only
    "WHERE State = @state AND Scope IN UNNEST(@scopes) AND (@live IS NULL OR ExpiresAt > @live) "
    "AND (@iss IS NULL OR NOT (Iss = @iss AND Subject = @sub)) "
    "ORDER BY CreatedAt, ApprovalId LIMIT @limit"
)
# What the start-up check plans (an identity that cannot read it is warned about).
# (Scope too: a table from before approval.match lacks it until init-db runs again.)
PROBE_SQL = f"SELECT ApprovalId, Scope FROM {TABLE} WHERE ApprovalId = @id"  # noqa: S608


def _record(row: Sequence[Any]) -> ApprovalRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    return ApprovalRecord(
        approval_id=values["ApprovalId"],
        state=values["State"],
        issuer=values["Issuer"],
        iss=values["Iss"],
        subject=values["Subject"],
        actors=tuple(values["Actors"] or ()),
        route=values["Route"],
        query=values["Query"],
        request_hash=values["RequestHash"],
        params=json.loads(values["Params"]),
        approvers=tuple(values["Approvers"] or ()),
        request_id=values["RequestId"],
        created_at=values["CreatedAt"],
        expires_at=values["ExpiresAt"],
        decided_at=values["DecidedAt"],
        decider_iss=values["DeciderIss"],
        decider_subject=values["DeciderSubject"],
        reason=values["Reason"],
        used_at=values["UsedAt"],
        used_by=values["UsedBy"],
        scope=values["Scope"],
    )


async def read(transaction: Any, approval_id: str) -> ApprovalRecord | None:
    """The row of ``approval_id`` (a point read; a read-write transaction locks it)."""
    from google.cloud.spanner_v1 import KeySet

    results = await transaction.read(
        TABLE,
        COLUMNS,
        KeySet(keys=[[approval_id]]),  # type: ignore[no-untyped-call]
        request_options={"request_tag": "spangate approval read"},
    )
    rows = [row async for row in results]
    return _record(rows[0]) if rows else None


def _values(record: ApprovalRecord) -> tuple[Any, ...]:
    return (
        record.approval_id,
        record.state,
        record.issuer,
        record.iss,
        record.subject,
        list(record.actors),
        record.route,
        record.query,
        record.request_hash,
        json.dumps(record.params, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        list(record.approvers),
        record.request_id,
        record.created_at,
        record.expires_at,
        record.decided_at,
        record.decider_iss,
        record.decider_subject,
        record.reason,
        record.used_at,
        record.used_by,
        record.scope,
    )


def insert(transaction: Any, record: ApprovalRecord) -> None:
    """Buffer a new request's row (applied at the transaction's commit)."""
    transaction.insert(table=TABLE, columns=COLUMNS, values=[_values(record)])


def update(transaction: Any, record: ApprovalRecord) -> None:
    """Buffer a changed row (state, decision, use, expiry)."""
    transaction.update(table=TABLE, columns=COLUMNS, values=[_values(record)])


async def list_rows(
    snapshot: Any,
    *,
    state: str,
    scopes: Sequence[str],
    live: dt.datetime | None,
    limit: int,
    not_by: tuple[str, str] | None = None,
) -> list[ApprovalRecord]:
    """Rows in ``state`` whose Scope is one of ``scopes`` (``live``: only those expiring after
    it; ``not_by``: not requested by this iss and subject), oldest first, at most ``limit``."""
    from google.cloud.spanner_v1 import param_types

    stream = await snapshot.execute_sql(
        LIST_SQL,
        params={
            "state": state,
            "scopes": list(scopes),
            "live": live,
            "limit": limit,
            "iss": not_by[0] if not_by else None,
            "sub": not_by[1] if not_by else None,
        },
        param_types={
            "iss": param_types.STRING,
            "sub": param_types.STRING,
            "state": param_types.STRING,
            "scopes": param_types.Array(param_types.STRING),  # type: ignore[no-untyped-call]
            "live": param_types.TIMESTAMP,
            "limit": param_types.INT64,
        },
        request_options={"request_tag": "spangate approval list"},
    )
    return [_record(row) async for row in stream]
