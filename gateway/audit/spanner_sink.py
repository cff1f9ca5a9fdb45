"""The Spanner audit sink: an append-only table, written in batches by a dedicated identity.

Table (``audit_table_ddl``, created by ``spangate init-db``): one row per event, keyed by the
event's random ``insertId`` (no hotspot), with the exact sealed line in ``Event`` (a string, so the
hash can be checked byte for byte; a JSON column would normalise it) and a few columns to query.

- Batches: each batch is one read-write transaction of insert mutations (retried when aborted)
  within ``DEADLINE_SECONDS`` (past it the writer refuses the batch: 503 ``audit-unavailable``;
  with the identity's channel in TRANSIENT_FAILURE it is refused before it is sent) under the
  sink's own identity, whose database role should hold INSERT on the table and nothing
  else (no UPDATE, no DELETE: append-only). Rows of a batch carry this process's chain for this
  sink (``ChainId``, ``Seq``, ``PrevHash``, ``EventHash``); each process starts a new chain.
- A write's own row: with this sink, a DML request's event is inserted in the statement's own
  transaction (``insert_in``), so the write and its record commit together or not at all. The row
  is written before Spanner assigns the commit timestamp (``CommitTime`` holds it), so its
  ``Event`` is the event as it stood just before the commit, unsealed (``ChainId``/``Seq``/
  ``PrevHash`` are NULL, ``EventHash`` is the keyed hash of ``Event``); the sealed event, with its
  commit timestamp, goes to the other sinks with the same ``insertId``. The write's identity needs
  INSERT on the table too.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import spanner

from gateway.audit.chain import canonical, event_hash, line_text, writable
from gateway.audit.sinks import Sealed
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = ["COLUMNS", "DEADLINE_SECONDS", "SpannerSink", "audit_table_ddl", "policy_ddl"]

COLUMNS = (
    "InsertId",
    "EventTime",
    "CommitTime",
    "RequestId",
    "Subject",
    "Query",
    "Allowed",
    "Status",
    "Code",
    "ChainId",
    "Seq",
    "PrevHash",
    "EventHash",
    "Event",
)

DEADLINE_SECONDS = 5.0  # one batch, all its attempts: past it the batch's requests get 503

_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


def audit_table_ddl(table: str, dialect: Dialect = GOOGLESQL) -> str:
    """The CREATE TABLE statement of the audit table, in ``dialect`` (PostgreSQL: the same
    names, quoted, so the sink's mutations name it alike in both)."""
    if not _TABLE.match(table):
        raise ValueError(f"not a table name: {table!r}")
    if dialect == POSTGRESQL:
        return f"""CREATE TABLE IF NOT EXISTS "{table}" (
  "InsertId"   varchar(32) NOT NULL,
  "EventTime"  timestamptz NOT NULL,
  "CommitTime" spanner.commit_timestamp NOT NULL,
  "RequestId"  varchar(128) NOT NULL,
  "Subject"    text,
  "Query"      text,
  "Allowed"    bool NOT NULL,
  "Status"     int8 NOT NULL,
  "Code"       text NOT NULL,
  "ChainId"    varchar(16),
  "Seq"        int8,
  "PrevHash"   varchar(64),
  "EventHash"  varchar(64) NOT NULL,
  "Event"      text NOT NULL,
  PRIMARY KEY ("InsertId")
)"""
    return f"""CREATE TABLE IF NOT EXISTS {table} (
  InsertId   STRING(32) NOT NULL,
  EventTime  TIMESTAMP NOT NULL,
  CommitTime TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
  RequestId  STRING(128) NOT NULL,
  Subject    STRING(MAX),
  Query      STRING(MAX),
  Allowed    BOOL NOT NULL,
  Status     INT64 NOT NULL,
  Code       STRING(MAX) NOT NULL,
  ChainId    STRING(16),
  Seq        INT64,
  PrevHash   STRING(64),
  EventHash  STRING(64) NOT NULL,
  Event      STRING(MAX) NOT NULL,
) PRIMARY KEY (InsertId)"""


def policy_ddl(policy: CompiledPolicy) -> list[str]:
    """The audit table of the policy's Spanner sink, if it has one (for ``spangate init-db``)."""
    dialect = policy.model.spanner.dialect
    sinks = policy.model.audit.sinks
    return [audit_table_ddl(s.table, dialect) for s in sinks if s.type == "spanner"]


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _row(event: dict[str, Any], line: bytes, digest: str) -> list[Any]:
    payload = event["protoPayload"]
    auth = payload.get("authenticationInfo") or {}
    return [
        event["insertId"],
        _time(event["timestamp"]),
        spanner.COMMIT_TIMESTAMP,
        payload["requestMetadata"]["requestAttributes"]["id"],
        auth.get("principalSubject"),
        payload.get("methodName"),
        bool(payload["metadata"]["decision"]["allow"]),
        int(event["httpRequest"]["status"]),
        payload["status"]["message"],
        event.get("chain"),
        event.get("seq"),
        event.get("prev"),
        digest,
        line.rstrip(b"\n").decode(),
    ]


class SpannerSink:
    """``write``: blocking, on its writer thread (batches); ``insert_in``: on the event loop, inside
    a write's own transaction."""

    def __init__(
        self,
        database: Any,
        table: str,
        *,
        key: bytes | None,
        retry_delay: float | None = None,
        deadline: float = DEADLINE_SECONDS,
        channel_state: Callable[[], str | None] | None = None,
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"not a table name: {table!r}")
        self.name = f"spanner:{table}"
        self.read_durability = "batched"  # a commit is a round trip: reads share theirs
        self.written_ok = False  # a batch is durable when it commits: nothing comes between
        self.table = table
        self.database = database
        self.key = key
        self.deadline = deadline  # the writer refuses a batch that takes longer (see writer.py)
        self._channel_state = channel_state
        self._retry: dict[str, Any] = {"timeout_secs": deadline}
        if retry_delay is not None:
            self._retry["default_retry_delay"] = retry_delay

    def unavailable(self) -> str | None:
        """On the event loop, before a batch: why Spanner surely cannot take it now, or None."""
        if self._channel_state is not None and self._channel_state() == "TRANSIENT_FAILURE":
            return f"{self.name}: Spanner is unreachable (channel in TRANSIENT_FAILURE)"
        return None

    def open(self) -> str | None:
        return None  # many replicas share the table: each process starts its own chain

    def write(self, batch: Sequence[Sealed]) -> None:
        rows = [_row(s.event, s.line, s.event["hash"]) for s in batch]

        def insert(transaction: Any) -> None:
            transaction.insert(self.table, COLUMNS, rows)

        self.database.run_in_transaction(insert, transaction_tag="spangate-audit", **self._retry)

    def insert_in(self, transaction: Any, event: dict[str, Any]) -> None:
        """Buffer ``event``'s row in ``transaction`` (the write's own): it commits with it."""
        clean = dict(writable(event))  # an odd value (a lone surrogate) must not fail the write
        line = line_text(canonical(clean).decode()).encode()  # as the other sinks write it
        transaction.insert(self.table, COLUMNS, [_row(clean, line, event_hash(clean, self.key))])

    def close(self) -> None:
        """Nothing to release: the Database belongs to the executor."""
