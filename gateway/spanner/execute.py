"""Run one whitelisted statement under its identity.

- Reads run in a single-use snapshot (strong, or the query's staleness), never in a read-write
  transaction; rows stream until ``max_rows + 1`` and then stop, with ``truncated`` set.
- DML runs through ``run_in_transaction``, which retries ABORTED itself (no second retry loop here);
  the commit timestamp comes from the committed transaction.
- The client is blocking, so calls run in a bounded thread pool, off the event loop.
- Against the emulator, which runs one read-write transaction at a time and aborts the rest with no
  retry delay, writes are serialised per database (an asyncio lock, so waiting writers hold no
  thread) and the client's retry delay is shortened.
- Spanner errors become ``SpannerError`` with stable codes (see ``map_error``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

from gateway.errors import SpannerError
from gateway.policy.compiled import CompiledQuery
from gateway.policy.model import Staleness, parse_duration
from gateway.spanner.identities import Databases
from gateway.spanner.params import spanner_params
from gateway.spanner.results import to_json

__all__ = ["Executor", "Result", "map_error"]

log = logging.getLogger("spangate.spanner")


@dataclass
class Result:
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    commit_timestamp: str | None = None
    is_dml: bool = False


def map_error(exc: Exception) -> SpannerError:
    """A Spanner/gRPC error -> a stable code and status."""
    name = type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    table: list[tuple[type[Exception], int, str, int | None]] = [
        (gexc.AlreadyExists, 409, "conflict", None),
        (gexc.FailedPrecondition, 409, "precondition-failed", None),
        (gexc.Aborted, 409, "aborted", None),
        (gexc.InvalidArgument, 400, "statement-rejected", None),
        (gexc.OutOfRange, 400, "statement-rejected", None),
        (gexc.DeadlineExceeded, 504, "timeout", None),
        (gexc.ServiceUnavailable, 503, "spanner-unavailable", 2),
        (gexc.ResourceExhausted, 503, "spanner-unavailable", 2),
        (gexc.RetryError, 503, "spanner-unavailable", 2),
        (gexc.PermissionDenied, 500, "identity-lacks-grant", None),
        (gexc.NotFound, 500, "statement-invalid", None),
    ]
    for kind, status, code, retry in table:
        if isinstance(exc, kind):
            if status == 500:
                log.error("spanner %s: %s (a policy/grant/schema mismatch)", name, message)
            detail = {
                "timeout": "the statement did not finish within its timeout",
                "spanner-unavailable": "Spanner is unavailable; retry later",
                "identity-lacks-grant": "the statement's identity lacks a grant it needs",
                "statement-invalid": "the statement refers to something that does not exist",
            }.get(code, message)
            grpc_code = getattr(getattr(exc, "grpc_status_code", None), "name", None)
            return SpannerError(
                detail, status=status, code=code, spanner_code=grpc_code or name, retry_after=retry
            )
    log.error("unexpected spanner error %s: %s", name, message)
    return SpannerError("the statement failed", status=500, code="spanner-error", spanner_code=name)


def _staleness(value: str | Staleness | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"max_staleness": dt.timedelta(seconds=parse_duration(value))}
    if value.max is not None:
        return {"max_staleness": dt.timedelta(seconds=parse_duration(value.max))}
    assert value.exact is not None
    return {"exact_staleness": dt.timedelta(seconds=parse_duration(value.exact))}


class Executor:
    def __init__(
        self,
        databases: Databases,
        *,
        threads: int = 32,
        emulator: bool = False,
    ) -> None:
        self.databases = databases
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spanner")
        self._emulator = emulator
        self._write_lock: asyncio.Lock | None = None

    async def warm(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.databases.warm)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.databases.close()

    async def run(self, query: CompiledQuery, values: Mapping[str, Any], *, tag: str) -> Result:
        params, types = spanner_params(query.params, values)
        database = self.databases.get(query.model.identity)
        loop = asyncio.get_running_loop()
        try:
            if not query.is_dml:
                return await loop.run_in_executor(
                    self._pool, self._read, database, query, params, types, tag
                )
            if not self._emulator:
                return await loop.run_in_executor(
                    self._pool, self._write, database, query, params, types, tag
                )
            if self._write_lock is None:
                self._write_lock = asyncio.Lock()
            async with self._write_lock:
                return await loop.run_in_executor(
                    self._pool, self._write, database, query, params, types, tag
                )
        except gexc.GoogleAPICallError as exc:
            raise map_error(exc) from exc
        except gexc.RetryError as exc:
            raise map_error(exc) from exc

    def _read(
        self,
        database: Any,
        query: CompiledQuery,
        params: dict[str, Any],
        types: dict[str, Any],
        tag: str,
    ) -> Result:
        limit = query.model.max_rows
        result = Result()
        with database.snapshot(**_staleness(query.model.staleness)) as snapshot:
            stream = snapshot.execute_sql(
                query.model.sql,
                params=params,
                param_types=types,
                timeout=query.model.timeout_seconds,
                request_options={"request_tag": tag},
            )
            raw_rows: list[Any] = []
            for row in stream:
                if len(raw_rows) == limit:
                    result.truncated = True
                    break
                raw_rows.append(row)
            result.columns = [f.name for f in stream.fields] if stream.fields else []
        cols = result.columns
        result.rows = [{c: to_json(v) for c, v in zip(cols, row, strict=True)} for row in raw_rows]
        result.row_count = len(result.rows)
        return result

    def _write(
        self,
        database: Any,
        query: CompiledQuery,
        params: dict[str, Any],
        types: dict[str, Any],
        tag: str,
    ) -> Result:
        seen: dict[str, Any] = {}
        timeout = query.model.timeout_seconds

        def work(transaction: Any) -> Result:
            seen["tx"] = transaction
            result = Result(is_dml=True)
            if query.sql.returning:
                stream = transaction.execute_sql(
                    query.model.sql,
                    params=params,
                    param_types=types,
                    timeout=timeout,
                    request_options={"request_tag": tag},
                )
                raw = list(stream)
                result.columns = [f.name for f in stream.fields] if stream.fields else []
                result.rows = [
                    {c: to_json(v) for c, v in zip(result.columns, r, strict=True)} for r in raw
                ]
                result.row_count = len(raw)
            else:
                result.row_count = transaction.execute_update(
                    query.model.sql,
                    params=params,
                    param_types=types,
                    timeout=timeout,
                    request_options={"request_tag": tag},
                )
            return result

        kw: dict[str, Any] = {"transaction_tag": tag, "timeout_secs": max(timeout, 30.0)}
        if self._emulator:
            kw["default_retry_delay"] = 0.01
        result: Result = database.run_in_transaction(work, **kw)
        committed = getattr(seen.get("tx"), "committed", None)
        result.commit_timestamp = to_json(committed) if committed is not None else None
        return result
