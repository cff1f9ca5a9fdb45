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
- Both dialects (``ddl(dialect)``, ``list_sql``, ``probe_sql``): in a PostgreSQL-dialect database
  the table is ``PG_DDL``, its names quoted, so the reads and mutations by key name it as in
  GoogleSQL; only the SQL statements (the list, the start-up probe) are written per dialect.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from gateway.approvals.record import ApprovalRecord, ListCursor
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = [
    "COLUMNS",
    "DDL",
    "LIST_SQL",
    "PG_DDL",
    "PG_LIST_SQL",
    "PG_PROBE_SQL",
    "PROBE_SQL",
    "TABLE",
    "ddl",
    "insert",
    "list_rows",
    "list_sql",
    "probe_sql",
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
  DeciderActors ARRAY<STRING(MAX)>,
) PRIMARY KEY (ApprovalId),
  ROW DELETION POLICY (OLDER_THAN(ExpiresAt, INTERVAL {ROW_TTL_DAYS} DAY))""",
    # a table made before approval.match existed gains the column (init-db runs it every time;
    # a no-op once there). Its older rows have no Scope: only their requesters see them.
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS Scope STRING(64)",
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS DeciderActors ARRAY<STRING(MAX)>",
    # the approvers' list reads by Scope and State, oldest first: one tenant's requests, however
    # many, are never scanned for another's list
    f"CREATE INDEX IF NOT EXISTS {TABLE}ByScope ON {TABLE} (Scope, State, CreatedAt)",
)

# The same table in a PostgreSQL-dialect database: its names quoted (their case kept), so reads
# and mutations by key name it as in GoogleSQL. No ALTER TABLE for Scope or DeciderActors:
# approvals came to this dialect with them, so no PostgreSQL-dialect table was ever made without
# them (a later column would come as GoogleSQL's does: the emulator takes PostgreSQL's `ALTER
# TABLE "T" ADD COLUMN IF NOT EXISTS "C" varchar(64)`).
PG_DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS "{TABLE}" (
  "ApprovalId" varchar(32) NOT NULL,
  "State" varchar(16) NOT NULL,
  "Issuer" varchar NOT NULL,
  "Iss" varchar NOT NULL,
  "Subject" varchar NOT NULL,
  "Actors" varchar[] NOT NULL,
  "Route" varchar NOT NULL,
  "Query" varchar NOT NULL,
  "RequestHash" varchar(64) NOT NULL,
  "Params" varchar NOT NULL,
  "Approvers" varchar[] NOT NULL,
  "RequestId" varchar NOT NULL,
  "CreatedAt" timestamptz NOT NULL,
  "ExpiresAt" timestamptz NOT NULL,
  "DecidedAt" timestamptz,
  "DeciderIss" varchar,
  "DeciderSubject" varchar,
  "Reason" varchar,
  "UsedAt" timestamptz,
  "UsedBy" varchar,
  "Scope" varchar(64),
  "DeciderActors" varchar[],
  PRIMARY KEY ("ApprovalId")
) TTL INTERVAL '{ROW_TTL_DAYS} days' ON "ExpiresAt\"""",
    f'CREATE INDEX IF NOT EXISTS "{TABLE}ByScope" ON "{TABLE}" ("Scope", "State", "CreatedAt")',
)

COLUMNS: tuple[str, ...] = (
    "ApprovalId", "State", "Issuer", "Iss", "Subject", "Actors", "Route", "Query",
    "RequestHash", "Params", "Approvers", "RequestId", "CreatedAt", "ExpiresAt", "DecidedAt",
    "DeciderIss", "DeciderSubject", "Reason", "UsedAt", "UsedBy", "Scope", "DeciderActors",
)  # fmt: skip
_SELECT = ", ".join(COLUMNS)
# Pending (or other) requests an approver may decide, oldest first: the approvers' list. A
# request's Scope digests its route and match values (``record.scope_hash``): the approver's
# scopes, one per route it may decide, select exactly the requests whose values it shares.
# Keyset pages: @after_at and @after_id (``record.ListCursor``, null on the first page) only
# position the list after the previous page's last row, in its order (CreatedAt, then
# ApprovalId: rows of the same instant are told apart by their id); the filters stay as they are.
LIST_SQL = (
    f"SELECT {_SELECT} FROM {TABLE} "  # noqa: S608 - constant names only
    "WHERE State = @state AND Scope IN UNNEST(@scopes) AND (@live IS NULL OR ExpiresAt > @live) "
    "AND (@iss IS NULL OR NOT (Iss = @iss AND Subject = @sub)) "
    "AND (@after_at IS NULL OR CreatedAt > @after_at "
    "OR (CreatedAt = @after_at AND ApprovalId > @after_id)) "
    "ORDER BY CreatedAt, ApprovalId LIMIT @limit"
)
# What the start-up check plans (an identity that cannot read it is warned about).
# (Scope and DeciderActors too: a table of an earlier version lacks them until init-db runs.)
PROBE_SQL = (
    f"SELECT ApprovalId, Scope, DeciderActors FROM {TABLE} WHERE ApprovalId = @id"  # noqa: S608
)

# The same two in PostgreSQL: placeholders by position, bound as p1, p2... The list's are
# $1 state, $2 scopes, $3 live, $4 iss, $5 sub, $6 limit, $7 after_at, $8 after_id
# (``_PG_NAMES``).
_PG_SELECT = ", ".join(f'"{c}"' for c in COLUMNS)
PG_LIST_SQL = (
    f'SELECT {_PG_SELECT} FROM "{TABLE}" '  # noqa: S608 - constant names only
    'WHERE "State" = $1 AND "Scope" = ANY($2) '
    'AND ($3::timestamptz IS NULL OR "ExpiresAt" > $3) '
    'AND ($4::varchar IS NULL OR NOT ("Iss" = $4 AND "Subject" = $5)) '
    'AND ($7::timestamptz IS NULL OR "CreatedAt" > $7 '
    'OR ("CreatedAt" = $7 AND "ApprovalId" > $8::varchar)) '
    'ORDER BY "CreatedAt", "ApprovalId" LIMIT $6'
)
_PG_NAMES = {
    "state": "p1", "scopes": "p2", "live": "p3", "iss": "p4", "sub": "p5", "limit": "p6",
    "after_at": "p7", "after_id": "p8",
}  # fmt: skip
PG_PROBE_SQL = (
    f'SELECT "ApprovalId", "Scope", "DeciderActors" FROM "{TABLE}" '  # noqa: S608
    'WHERE "ApprovalId" = $1'
)


def ddl(dialect: Dialect) -> tuple[str, ...]:
    """The table's DDL in ``dialect``."""
    return PG_DDL if dialect == POSTGRESQL else DDL


def list_sql(dialect: Dialect) -> str:
    """The approvers' list in ``dialect`` (``list_rows`` binds its parameters)."""
    return PG_LIST_SQL if dialect == POSTGRESQL else LIST_SQL


def probe_sql(dialect: Dialect) -> tuple[str, str]:
    """What the start-up check plans in ``dialect``, and its one (STRING) parameter's name."""
    return (PG_PROBE_SQL, "p1") if dialect == POSTGRESQL else (PROBE_SQL, "id")


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
        decider_actors=tuple(values["DeciderActors"] or ()),
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
        list(record.decider_actors),
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
    after: ListCursor | None = None,
    dialect: Dialect = GOOGLESQL,
) -> list[ApprovalRecord]:
    """Rows in ``state`` whose Scope is one of ``scopes`` (``live``: only those expiring after
    it; ``not_by``: not requested by this iss and subject), oldest first, at most ``limit``;
    ``after``: only those after this row of the list (its CreatedAt to the nanosecond, then its
    ApprovalId); the statement in ``dialect``."""
    from google.api_core.datetime_helpers import DatetimeWithNanoseconds
    from google.cloud.spanner_v1 import param_types

    after_at: DatetimeWithNanoseconds | None = None
    if after is not None:
        at = after.timestamp
        v = at.value
        after_at = DatetimeWithNanoseconds(  # type: ignore[no-untyped-call]
            v.year, v.month, v.day, v.hour, v.minute, v.second,
            nanosecond=at.nanos, tzinfo=dt.UTC,
        )  # fmt: skip
    params: dict[str, Any] = {
        "state": state,
        "scopes": list(scopes),
        "live": live,
        "limit": limit,
        "iss": not_by[0] if not_by else None,
        "sub": not_by[1] if not_by else None,
        "after_at": after_at,
        "after_id": after.approval_id if after is not None else None,
    }
    types: dict[str, Any] = {
        "iss": param_types.STRING,
        "sub": param_types.STRING,
        "state": param_types.STRING,
        "scopes": param_types.Array(param_types.STRING),  # type: ignore[no-untyped-call]
        "live": param_types.TIMESTAMP,
        "limit": param_types.INT64,
        "after_at": param_types.TIMESTAMP,
        "after_id": param_types.STRING,
    }
    if dialect == POSTGRESQL:  # $k travels as pk
        params = {_PG_NAMES[name]: value for name, value in params.items()}
        types = {_PG_NAMES[name]: value for name, value in types.items()}
    stream = await snapshot.execute_sql(
        list_sql(dialect),
        params=params,
        param_types=types,
        request_options={"request_tag": "spangate approval list"},
    )
    return [_record(row) async for row in stream]
