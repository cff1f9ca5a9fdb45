"""Run one whitelisted statement under its identity, on the asyncio Spanner client.

Execution model: ``google.cloud.spanner_v1.AsyncClient`` on the event loop (no thread pool).
Chosen over the blocking client in a bounded thread pool by ``make bench`` (``bench_spanner``:
faster at concurrency), and because cancellation works: a deadline cancels the RPC, whereas a
blocking call abandoned by its caller keeps its thread (the client's streaming reads retry
UNAVAILABLE without end while Spanner is unreachable).

- Reads run in a single-use snapshot (strong, or the query's exact or bounded staleness), never in
  a read-write transaction; rows stream until ``max_rows + 1`` and then stop, with ``truncated``
  (a paginated query's one more: its ``LIMIT`` already bounds them to its page and one row).
  The read's RPC is sent straight on the client's channel (``direct.py``: the library's request
  and metadata without its per-call overhead; one unary ExecuteSql when the statement bounds its
  rows, ``bounded.py``); when that path cannot finish a read (UNAVAILABLE, a chunked value...) the
  library's ``snapshot.execute_sql`` runs it, as it does for every read when the client traces.
- Writes (DML) are ``WritePath``'s, a base of ``Executor`` (``writes.py``): the read-write
  transaction and its Idempotency-Key record, a write's deadline and outcome, the settling of
  writes answered before they ended, the counting of Commit RPCs.
- Every call has one deadline, the query's ``timeout``. Past it, a read: 504 ``timeout``, or 503
  ``spanner-unavailable`` when the identity's channel is not connected (Spanner unreachable); a
  write: see ``writes.py``. A channel in TRANSIENT_FAILURE fails at once with 503.
- Request tags name the request id, query and route; the transaction tag the query and route.
  Priority per query.
- Limits (``limits.py``) are checked before anything is sent; Spanner errors map to stable codes
  (``errors.py``).
- Against the emulator, which runs one read-write transaction at a time and aborts the others
  without a retry delay, writes (and DML analysis) are serialised per database by an asyncio lock
  and the client's retry delay is 10 ms; production runs writes concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.api_core import exceptions as gexc

from gateway.errors import GatewayError
from gateway.policy.compiled import CompiledPolicy, CompiledQuery
from gateway.spanner import idempotency as idem
from gateway.spanner.analyze import Analysis, analyze_policy
from gateway.spanner.bounded import bounded_rows
from gateway.spanner.direct import Checkout, DirectReads, Fallback, Prepared
from gateway.spanner.errors import (
    grpc_code,
    map_error,
    timeout_error,
    unavailable_error,
    withheld,
)
from gateway.spanner.identities import CONNECT_TIMEOUT_SECONDS, Databases
from gateway.spanner.limits import check_limits
from gateway.spanner.options import Tags, request_options, snapshot_options, tags_for
from gateway.spanner.params import spanner_params
from gateway.spanner.results import Result
from gateway.spanner.writes import (
    EMULATOR_RETRY_DELAY,
    ROLLBACK_TIMEOUT_SECONDS,
    SENT_LOOKUP,
    SENT_STATEMENT,
    Guard,
    InTransaction,
    OnOutcome,
    OnSettled,
    Sent,
    Settled,
    WriteHooks,
    WritePath,
    _CommitUnknown,
    _rows,
    _Settling,
    _types,
    _WriteState,
    note_commit_send,
)

__all__ = [
    "EMULATOR_RETRY_DELAY",
    "Executor",
    "Guard",
    "InTransaction",
    "OnSettled",
    "Result",
    "SENT_LOOKUP",
    "SENT_STATEMENT",
    "Sent",
    "Settled",
    "Tags",
    "WriteHooks",
    "note_commit_send",
    "tags_for",
]

log = logging.getLogger("spangate.spanner")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _ReadRequest:
    """One read, as ``_read`` hands it to ``_direct_read`` (built once per call)."""

    state: _WriteState  # a read uses its ``sent`` alone
    database: Any
    query: CompiledQuery
    params: dict[str, Any]
    types: dict[str, Any]
    tags: Tags
    deadline: float

    @property
    def limit(self) -> int:
        """The rows the read keeps (one past them marks the result truncated and ends the read):
        ``max_rows``. A paginated query's one more: its LIMIT reads one row past its page (at most
        max_rows + 1), so that the gateway cuts the page and knows a next one exists
        (gateway.shaping.paging)."""
        return self.query.model.max_rows + (1 if self.query.paging is not None else 0)


class Executor(WritePath):
    """Runs statements for the app; one per process (its Databases hold the sessions). Its write
    path (``_guarded_write``, ``settle``, ``stored_answer``...) is ``WritePath``'s."""

    def __init__(
        self,
        databases: Databases,
        *,
        emulator: bool = False,
        max_settling: int = 256,
        hooks: WriteHooks | None = None,
        on_statement: Callable[[str, float], None] | None = None,
        direct_reads: bool = True,
    ) -> None:
        self.databases = databases
        # (query name, seconds) as each statement that was sent ends, however it ended
        self.on_statement = on_statement
        self._emulator = emulator
        self._write_lock: asyncio.Lock | None = None
        self._analyses: dict[str, Analysis] = {}
        self._settling: dict[asyncio.Future[Result], _Settling] = {}
        self._max_settling = max_settling
        self._closing = False
        self.hooks = hooks or WriteHooks()
        self.commits_sent = 0  # Commit RPCs sent (counted at the transport), since start-up
        self._uncounted_warned = False
        # Reads on the direct path (direct.py) where the client allows it; False: always the
        # library's path (tests compare the two).
        self.direct_reads = direct_reads
        self._directs: dict[int, DirectReads | None] = {}
        self._point_lookups: set[tuple[str, str, str]] = set()  # (query, identity, sql)
        self.direct_counts = {"direct": 0, "unary": 0, "fallback": 0}  # reads, since start-up

    # -- lifecycle ----------------------------------------------------------------------------
    async def warm(self) -> None:
        await self.databases.warm()

    def close(self) -> None:
        """Nothing to do synchronously; ``aclose()`` closes the sessions."""

    async def aclose(self) -> None:
        """Cut what still settles (``settle()``, bounded), then close the sessions."""
        await self.settle(ROLLBACK_TIMEOUT_SECONDS)
        await self.databases.aclose()

    # -- analysis -----------------------------------------------------------------------------
    async def analyze(
        self,
        policy: CompiledPolicy,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        fresh: bool = False,
    ) -> Analysis:
        """PLAN-analyse every statement of ``policy`` (see ``analyze.py``); PolicyError naming the
        query when Spanner refuses one. Remembered per policy hash for ``analysis()``; ``fresh``:
        analyse again even so (the schema may have changed), replacing it only on success."""
        found = None if fresh else self._analyses.get(policy.sha256)
        if found is not None:
            return found
        await self.databases.connect(connect_timeout)
        async with self._writes():
            analysis = await asyncio.ensure_future(analyze_policy(policy, self.databases))
        self._analyses = {**dict(list(self._analyses.items())[-3:]), policy.sha256: analysis}
        for name in analysis.point_lookups:  # one row at most: a unary ExecuteSql (direct.py)
            query = policy.queries[name]
            self._point_lookups.add((name, query.model.identity, query.model.sql))
        return analysis

    def analysis(self, policy: CompiledPolicy) -> Analysis | None:
        """The analysis of ``policy`` when it has run, else None."""
        return self._analyses.get(policy.sha256)

    async def analysis_of(self, policy: CompiledPolicy) -> Analysis | None:
        """The analysis of ``policy``, running it now if a reload has not (for the OpenAPI
        document); None when Spanner cannot analyse it (the caller falls back to generic rows)."""
        found = self._analyses.get(policy.sha256)
        if found is not None or not self.databases.is_open:
            return found
        try:
            return await self.analyze(policy)
        except Exception as exc:  # noqa: BLE001 - a description is still served, untyped
            log.warning("cannot analyse the policy for OpenAPI: %s", exc)
            return None

    # -- the gateway's own rows (approvals) ----------------------------------------------------
    async def transact(
        self, identity: str, work: Callable[[Any], Awaitable[T]], *, tag: str, timeout: float
    ) -> T:
        """``work(transaction)`` in a read-write transaction of ``identity`` (retried on ABORTED
        by the client library), within ``timeout``; against the emulator, one writer at a time
        as for statements. In a task of its own (see ``WritePath._guarded_write`` on the client's
        context variable). Spanner's errors propagate as they are."""
        database = self.databases.aio(identity)
        options: dict[str, Any] = {"transaction_tag": tag, "timeout_secs": timeout}
        if self._emulator:
            options["default_retry_delay"] = EMULATOR_RETRY_DELAY

        async def body() -> T:
            async with self._writes():
                result: T = await database.run_in_transaction(work, **options)
                return result

        async with asyncio.timeout(timeout):
            return await asyncio.ensure_future(body())

    async def snapshot_read(
        self, identity: str, read: Callable[[Any], Awaitable[T]], *, timeout: float
    ) -> T:
        """``read(snapshot)`` in a strong single-use snapshot of ``identity``, within ``timeout``."""
        database = self.databases.aio(identity)
        async with asyncio.timeout(timeout):
            async with database.snapshot() as snapshot:
                return await read(snapshot)

    # -- statements ---------------------------------------------------------------------------
    def _writes(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The emulator's one-writer-at-a-time lock; nothing in production."""
        if not self._emulator:
            return contextlib.nullcontext()
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    async def run(
        self,
        query: CompiledQuery,
        values: Mapping[str, Any],
        *,
        tags: Tags,
        idempotency: idem.IdempotencyKey | None = None,
        in_transaction: InTransaction | None = None,
        on_settled: OnSettled | None = None,
        on_outcome: OnOutcome | None = None,
        on_sent: Callable[[Sent], None] | None = None,
        guard: Guard | None = None,
    ) -> Result:
        """Run ``query`` with bound ``values``; SpannerError (and the limits' errors) on failure.
        ``guard`` (writes): awaited in the write's transaction before its statement (``Guard``).

        A write's GatewayError always carries ``outcome`` (``extra["outcome"]``, the problem's
        member). ``on_outcome`` (writes): called with the outcome when the write fails otherwise:
        its caller cancelled (not by the deadline), or an unexpected exception (re-raised as it
        is). ``on_settled`` (writes): called once, later, when a write answered with outcome
        ``unknown`` (its Commit in flight) has settled; see ``Settled``. ``on_sent``: called
        at most once with each ``Sent``: ``SENT_LOOKUP`` just before a keyed write first reads
        its key's record, ``SENT_STATEMENT`` just before the statement itself is first sent. A
        call that ends without ``SENT_STATEMENT`` provably never ran its statement (refused
        before sending anything, an Idempotency-Key replay or misuse, a write cut before its
        statement), and one without either sent nothing to Spanner: what its budget is given
        back for (``gateway.budgets.check.refundable``)."""
        state = _WriteState(keyed=idempotency is not None, on_sent=on_sent)
        try:
            return await self._run(
                query,
                values,
                tags=tags,
                state=state,
                idempotency=idempotency,
                in_transaction=in_transaction,
                on_settled=on_settled,
                guard=guard,
            )
        except GatewayError as exc:
            if query.is_dml and not isinstance(exc.extra.get("outcome"), str):
                exc.extra["outcome"] = state.outcome()
            raise
        except BaseException:  # cancelled, or unexpected: the caller answers (499, 500)
            if query.is_dml and on_outcome is not None:
                on_outcome(state.outcome())
            raise

    async def _run(
        self,
        query: CompiledQuery,
        values: Mapping[str, Any],
        *,
        tags: Tags,
        state: _WriteState,
        idempotency: idem.IdempotencyKey | None,
        in_transaction: InTransaction | None,
        on_settled: OnSettled | None,
        guard: Guard | None = None,
    ) -> Result:
        identity = query.model.identity
        database = self.databases.aio(identity)
        check_limits(query.model.sql, values, is_dml=query.is_dml)
        if self.databases.channel_state(identity) == "TRANSIENT_FAILURE":
            raise unavailable_error()
        if query.is_dml and (self._closing or len(self._settling) >= self._max_settling):
            log.warning(
                "a write to query %r refused up front: %s (request %s)",
                query.name,
                "shutting down"
                if self._closing
                else f"{len(self._settling)} writes are settling (SPANGATE_MAX_SETTLING_WRITES)",
                tags.request,
            )
            raise unavailable_error("Spanner is unavailable; the write did not run; retry later")
        params, types = spanner_params(query.params, values, query.wire, query.dialect)
        timeout = query.model.timeout_seconds
        started = asyncio.get_running_loop().time()
        deadline = started + timeout
        try:
            async with asyncio.timeout(timeout):
                if not query.is_dml:
                    return await self._read(
                        _ReadRequest(state, database, query, params, types, tags, deadline)
                    )
                return await self._guarded_write(
                    state,
                    on_settled,
                    tags.request,
                    database,
                    query,
                    params,
                    types,
                    tags,
                    deadline,
                    idempotency,
                    in_transaction,
                    guard,
                )
        except TimeoutError:
            if query.is_dml and state.outcome() == "unknown":  # its Commit (or an earlier one
                raise timeout_error(timeout, outcome="unknown") from None  # of its key) may land
            if self.databases.channel_state(identity) not in (None, "READY", "IDLE"):
                raise unavailable_error(
                    "Spanner is unavailable; the write did not commit; retry later"
                    if query.is_dml
                    else None
                ) from None
            raise timeout_error(
                timeout, outcome="not-committed" if query.is_dml else None
            ) from None
        except _CommitUnknown as exc:
            log.warning(
                "the Commit of a write to query %r failed without saying whether it committed: "
                "%s, %s",
                query.name,
                grpc_code(exc.cause),
                withheld(exc.cause),
            )
            raise timeout_error(timeout, outcome="unknown") from exc.cause
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise map_error(
                exc,
                query=query.name,
                identity=identity,
                role=self.databases.roles.get(identity),
            ) from exc
        finally:
            if self.on_statement is not None:
                self.on_statement(query.name, asyncio.get_running_loop().time() - started)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(0.001, deadline - asyncio.get_running_loop().time())

    async def _read(self, read: _ReadRequest) -> Result:
        query = read.query
        direct = self._direct(read.database)
        if direct is not None:
            try:
                return await self._direct_read(direct, read)
            except Fallback:  # nothing of it was used: the library's path runs the read
                self.direct_counts["fallback"] += 1
        limit = read.limit
        result = Result()
        raw: list[Any] = []
        async with read.database.snapshot(**snapshot_options(query)) as snapshot:
            read.state.note_sent()
            stream = await snapshot.execute_sql(
                query.model.sql,
                params=read.params,
                param_types=read.types,
                timeout=self._remaining(read.deadline),
                request_options=request_options(query, read.tags.request),
            )
            rows = stream.__aiter__()
            try:
                async for row in rows:
                    if len(raw) == limit:
                        result.truncated = True  # the (max_rows + 1)th row: stop reading
                        break
                    raw.append(row)
            finally:
                await rows.aclose()
            result.columns = [f.name for f in stream.fields] if stream.fields else []
            result.types = _types(query, stream.fields)
        result.rows = _rows(result.columns, raw)
        result.row_count = len(result.rows)
        return result

    def _direct(self, database: Any) -> DirectReads | None:
        """The Database's direct reads (``direct.py``), or None: the library's path."""
        key = id(database)
        if key not in self._directs:
            self._directs[key] = DirectReads.of(database) if self.direct_reads else None
        return self._directs[key]

    async def _direct_read(self, direct: DirectReads, read: _ReadRequest) -> Result:
        """``_read`` on the direct path; ``Fallback`` when the library's path must run it."""
        query = read.query

        def build() -> Prepared:
            from google.cloud.spanner_v1.types import Type

            return Prepared(
                sql=query.model.sql,
                param_types={name: Type.pb(t) for name, t in read.types.items()},
                selector=direct.selector(snapshot_options(query)),
                priority=int(request_options(query, "").get("priority", 0)),
                bounded=bounded_rows(query, point_lookup=key in self._point_lookups) is not None,
            )

        key = (query.name, query.model.identity, query.model.sql)
        prepared = direct.prepared(key, build)
        async with Checkout(read.database) as checked_out:  # database.snapshot() less its Snapshot
            session = getattr(checked_out, "name", None)
            if not isinstance(session, str):
                raise Fallback
            request = direct.request(session, prepared, read.params, read.tags.request)
            read.state.note_sent()
            fetch = direct.unary if prepared.bounded else direct.streamed
            rows = await fetch(
                session, prepared, request, read.limit, self._remaining(read.deadline),
                bool(query.model.mask),
            )  # fmt: skip
        self.direct_counts["unary" if prepared.bounded else "direct"] += 1
        result = Result(columns=rows.columns, types=rows.types, rows=rows.rows)
        result.truncated = rows.truncated
        result.row_count = len(result.rows)
        return result
