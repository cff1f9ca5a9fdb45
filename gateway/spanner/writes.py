"""The write path of the executor: ``WritePath``, a base of ``Executor`` (``execute.py``).

- DML runs through ``run_in_transaction``, which retries ABORTED itself (there is no second retry
  loop here) with a transaction tag; THEN RETURN rows come back (at most ``max_rows``); the commit
  timestamp comes from the committed transaction. With an Idempotency-Key its record is read and
  written in the same transaction (``idempotency.py``); ``in_transaction`` adds the caller's own
  work to it (an audit row).
- Every call has one deadline, the query's ``timeout`` (for a write: all its attempts and, against
  the emulator, its wait for the write lock). Past it, a read or a write that had not sent its
  Commit: 504 ``timeout``, or 503 ``spanner-unavailable`` when the identity's channel is not
  connected (Spanner unreachable); such a write is abandoned: it can never commit afterwards (no
  new attempt, no Commit). A write whose Commit was sent and has not answered: 504 ``timeout``
  whatever the channel, its outcome unknown (callers retry with the same Idempotency-Key); the
  Commit settles in the background and ``on_settled`` learns how it ended (the audit trail records
  it). A channel in TRANSIENT_FAILURE fails at once with 503. A failed write's error carries
  ``outcome`` (``extra["outcome"]``): ``not-committed`` or ``unknown`` (see ``_WriteState``).
- Settling writes are bounded: at most ``max_settling`` at once (more are refused up front, 503,
  nothing sent); one abandoned before its Commit is cancelled after ``ROLLBACK_TIMEOUT_SECONDS``;
  ``settle()`` (graceful shutdown) waits for them, bounded, and logs each still unknown.
- The Commit RPC is counted where it is sent (the generated client's transport, below its retry):
  a refusal is proof of "not committed" only when that Commit was sent once.

What reads share with writes is here too, so that ``execute.py`` imports this module and never
the reverse: ``Sent``, ``_WriteState`` (a read uses its ``sent``), ``EMULATOR_RETRY_DELAY``, and
how a result's rows and types are built (``_rows``, ``_types``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from google.api_core import exceptions as gexc

from gateway.errors import SpannerError
from gateway.policy.compiled import CompiledQuery
from gateway.spanner import idempotency as idem
from gateway.spanner.analyze import type_name
from gateway.spanner.errors import grpc_code, withheld
from gateway.spanner.identities import Databases
from gateway.spanner.options import Tags, request_options
from gateway.spanner.results import Result, to_json

__all__ = [
    "EMULATOR_RETRY_DELAY",
    "Guard",
    "InTransaction",
    "OnOutcome",
    "OnSettled",
    "ROLLBACK_TIMEOUT_SECONDS",
    "SENT_LOOKUP",
    "SENT_STATEMENT",
    "SETTLE_TIMEOUT_SECONDS",
    "Sent",
    "Settled",
    "WriteHooks",
    "WritePath",
    "note_commit_send",
]

log = logging.getLogger("spangate.spanner")

EMULATOR_RETRY_DELAY = 0.01
ROLLBACK_TIMEOUT_SECONDS = 2.0
# How long a write answered while its Commit was in flight waits for that Commit's outcome (the
# client library retries a Commit on UNAVAILABLE for up to an hour); past it, the outcome stays
# unknown (logged).
SETTLE_TIMEOUT_SECONDS = 60.0

# Errors of a Commit RPC sent once that prove it did not commit (a refusal of a re-sent Commit
# proves nothing: the first send may have committed and lost its answer); any other (UNAVAILABLE
# after its retries, DEADLINE_EXCEEDED, CANCELLED, INTERNAL, NOT_FOUND...) leaves it unknown.
_COMMIT_REFUSED: tuple[type[Exception], ...] = (
    gexc.Aborted,
    gexc.AlreadyExists,
    gexc.FailedPrecondition,
    gexc.InvalidArgument,
    gexc.OutOfRange,
    gexc.PermissionDenied,
)

# What a call has handed to Spanner (``on_sent``): a keyed write's lookup of its Idempotency-Key
# record (a read-write transaction that reads, and locks, one row), and the statement itself.
Sent = Literal["key-lookup", "statement"]
SENT_LOOKUP: Sent = "key-lookup"
SENT_STATEMENT: Sent = "statement"

# Extra work inside a write's read-write transaction, after its statement ran: (transaction,
# result) -> None or an awaitable. Called on every attempt (an aborted attempt's mutations are
# discarded with it), never for an Idempotency-Key replay. An exception it raises rolls the write
# back and reaches the caller.
InTransaction = Callable[[Any, Result], Awaitable[None] | None]

# Work inside a write's read-write transaction BEFORE its statement (after its Idempotency-Key
# lookup, so a replay answers first): an approval's use is checked and marked here
# (``gateway.approvals``). Called on every attempt; an exception it raises rolls the write back,
# nothing of the statement sent, and reaches the caller.
Guard = Callable[[Any], Awaitable[None]]


def _types(query: CompiledQuery, fields: Any) -> list[str]:
    """The result columns' Spanner types, for a query that masks columns (what its masks hash
    and redact by); nothing for the others, which need none."""
    return [type_name(f.type_) for f in fields or ()] if query.model.mask else []


def _rows(columns: list[str], raw: list[Any]) -> list[dict[str, Any]]:
    return [{c: to_json(v) for c, v in zip(columns, row, strict=True)} for row in raw]


class _Replay(Exception):  # control flow: roll back, answer the stored result
    def __init__(self, result: Result) -> None:
        super().__init__("replay")
        self.result = result


class _Abandoned(Exception):  # control flow: the caller was answered; this write must not commit
    def __init__(self) -> None:
        super().__init__("the write was abandoned at its deadline")


class _CommitUnknown(Exception):  # a Commit that was sent failed in a way that does not prove
    def __init__(self, cause: BaseException) -> None:  # it did not commit
        super().__init__(type(cause).__name__)  # never Spanner's words (they may quote values)
        self.cause = cause


@dataclass
class _WriteState:
    """Where one write is, shared by its task and the caller's deadline (one event loop: every
    read and change is atomic between awaits). A read uses ``sent`` alone."""

    keyed: bool = False  # it has an Idempotency-Key
    answered: bool = False  # the caller has been answered: no attempt starts, no Commit is sent
    began: bool = False  # an attempt started (the key's record is being read)
    key_clear: bool = False  # this attempt read the key's record: none for this request
    commit_sent: bool = False  # a Commit was handed to the client library and not refused
    commit_sends: int = 0  # Commit RPCs of the current attempt actually sent (transport level)
    abandoned: bool = False  # _Abandoned was raised (whatever the library's rollback raises next)
    looked_up: bool = False  # the key's record was asked for (a read-write transaction began)
    sent: bool = False  # the statement itself was handed to Spanner (reads too; see note_sent)
    on_sent: Callable[[Sent], None] | None = None

    def note_lookup(self) -> None:
        """The Idempotency-Key record is about to be read, in a read-write transaction of its
        own. Tells ``on_sent`` (``SENT_LOOKUP``) once."""
        if not self.looked_up:
            self.looked_up = True
            if self.on_sent is not None:
                self.on_sent(SENT_LOOKUP)

    def note_sent(self) -> None:
        """The statement is about to be sent (a read's query, a write's DML, not an
        Idempotency-Key lookup): from here on it may have run. Tells ``on_sent``
        (``SENT_STATEMENT``) once."""
        if not self.sent:
            self.sent = True
            if self.on_sent is not None:
                self.on_sent(SENT_STATEMENT)

    def outcome(self) -> str:
        """A failed write's outcome: ``unknown`` while its Commit may have landed, or (with an
        Idempotency-Key) once it began without learning that its key has no record: it may be
        the retry of an earlier write that committed. Else ``not-committed``."""
        if self.commit_sent or (self.keyed and self.began and not self.key_clear):
            return "unknown"
        return "not-committed"


# The write whose Commit is being sent, in the write's own task's context (see note_commit_send).
_SENDING: contextvars.ContextVar[_WriteState | None] = contextvars.ContextVar(
    "spangate_sending", default=None
)


def note_commit_send() -> None:
    """Count one Commit RPC sent for the write running in this context (the transport wrapper
    calls it for every send, the generated client's retries included; tests' fake commits too)."""
    state = _SENDING.get()
    if state is not None:
        state.commit_sends += 1


def _count_commit_sends(database: Any) -> bool:
    """Wrap the Commit stub under the generated client's retry (once per transport) so that each
    send is counted; False when this client library is shaped otherwise (then a refused Commit
    counts as sent once: the library's own re-sends go unseen)."""
    try:
        transport = database.spanner_api.transport
        wrapped = transport._wrapped_methods[transport.commit]
        target = wrapped._target
    except (AttributeError, KeyError, TypeError):
        return False
    if getattr(target, "_spangate_counted", False):
        return True

    def counted(*args: Any, **kwargs: Any) -> Any:
        note_commit_send()
        return target(*args, **kwargs)

    counted._spangate_counted = True  # type: ignore[attr-defined]
    wrapped._target = counted
    return True


@dataclass
class WriteHooks:
    """Seams for tests (None in production): awaited inside a write's attempt, in its own task.
    ``attempt``: called with each attempt's transaction as the attempt starts (so that a test
    can end it as Spanner ends an aborted one). ``after_lookup``: once a keyed write has read its
    key's record, before it looks at what it found (a slow lookup, as far as the write knows).
    ``after_statement``: after the statement (and the key's record) ran, before
    ``in_transaction`` and the Commit. ``before_commit``: once the Commit is marked sent, just
    before the client library sends it; an exception it raises is the Commit's (call
    ``note_commit_send()`` to count fake sends)."""

    attempt: Callable[[Any], None] | None = None
    after_lookup: Callable[[], Awaitable[None]] | None = None
    after_statement: Callable[[], Awaitable[None]] | None = None
    before_commit: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Settled:
    """How a write answered ``unknown`` (its Commit in flight at the deadline) ended.

    ``committed``: True (``result`` has the commit timestamp), False (Spanner refused the Commit,
    sent once, or the client library's retry after an ABORTED Commit was refused because the
    caller had been answered), or None (still unknown: the Commit failed without saying, took
    longer than ``SETTLE_TIMEOUT_SECONDS`` (``error`` "timeout"), or was cut by shutdown
    (``error`` "shutdown")). ``seconds``: from the answer to the settlement. ``request``: the
    request tag (it begins with the request id)."""

    committed: bool | None
    result: Result | None
    seconds: float
    error: str | None = None
    request: str = ""


# Called once a write answered ``unknown`` settles; returns what names its audit event (for the
# log line), or None.
OnSettled = Callable[[Settled], "str | None"]
OnOutcome = Callable[[str], None]


@dataclass
class _Settling:
    request: str
    commit_sent: bool


class WritePath:
    """The write path of ``Executor`` (its base): ``_guarded_write`` and what it runs, the
    settling of writes answered before they ended (``settle()``), ``stored_answer``. What it
    reads of the executor is declared here; ``Executor.__init__`` sets it (``_writes`` and
    ``_remaining`` are ``Executor``'s methods)."""

    databases: Databases
    hooks: WriteHooks
    commits_sent: int  # Commit RPCs sent (counted at the transport), since start-up
    _emulator: bool
    _uncounted_warned: bool
    _settling: dict[asyncio.Future[Result], _Settling]  # writes answered, still settling
    _closing: bool  # settle() began: new writes are refused
    _writes: Callable[[], contextlib.AbstractAsyncContextManager[Any]]  # the emulator's lock
    _remaining: Callable[[float], float]  # seconds left before a deadline (at least 1 ms)

    # -- settling (graceful shutdown) ---------------------------------------------------------
    @property
    def settling(self) -> int:
        """Writes answered (deadline or cancellation) whose transaction is still settling."""
        return len(self._settling)

    async def settle(self, seconds: float) -> None:
        """Graceful shutdown, before the audit trail closes: wait up to ``seconds`` for settling
        writes (their follow-up events are queued as they settle), then cut the rest: each whose
        Commit was in flight is logged as an error (its outcome stays unknown), and its
        ``on_settled`` hears ``committed=None, error="shutdown"``. New writes are refused."""
        self._closing = True
        if self._settling and seconds > 0:
            log.info("waiting up to %g s for %d settling write(s)", seconds, len(self._settling))
            await asyncio.wait(list(self._settling), timeout=seconds)
        left = list(self._settling)
        for task in left:
            task.cancel()
        if left:  # a cut write rolls back (bounded by ROLLBACK_TIMEOUT_SECONDS)
            await asyncio.wait(left, timeout=ROLLBACK_TIMEOUT_SECONDS * 2)
        await asyncio.sleep(0)  # their done callbacks

    # -- writes -------------------------------------------------------------------------------
    async def _guarded_write(
        self, state: _WriteState, on_settled: OnSettled | None, request: str, *args: Any
    ) -> Result:
        """``_write`` in its own task. A deadline that passes while the write waits (for the
        emulator's lock) drops it. One that passes once it has begun answers the caller at once
        and marks the write answered, so that from then on it cannot commit: no new attempt
        starts and no Commit is sent (``_write`` checks the mark before each attempt, at the end
        of each attempt and in front of each Commit). What is in flight settles in the
        background, bounded by its RPCs' own deadlines and ``SETTLE_TIMEOUT_SECONDS``:
        - no Commit sent: the transaction is rolled back (outcome ``not-committed``, certain), the
          write cancelled if it takes longer than ``ROLLBACK_TIMEOUT_SECONDS``;
        - a Commit sent: it commits or not (outcome ``unknown`` to the caller); ``on_settled``
          hears which.
        Cancelling it mid-RPC instead would abandon a transaction Spanner does not know is over
        (it holds its locks; the emulator aborts every other writer meanwhile).

        Its own task also gives it its own copy of the context: the client marks "a transaction
        is running" in a context variable before an await a deadline can cancel, and then never
        clears it; in the caller's context that mark would refuse later writes as "nested"."""
        began = False

        async def body() -> Result:
            nonlocal began
            async with self._writes():
                began = True
                return await self._write(state, *args)

        task = asyncio.ensure_future(body())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            state.answered = True  # synchronously, before the caller hears anything
            if not began:
                task.cancel()
                raise
            loop = asyncio.get_running_loop()
            # What the caller is told (``outcome``): ``unknown`` while its Commit is in flight,
            # and for a keyed write cut while its key was read (an earlier write of that key may
            # have committed); either way it gets a follow-up event once it settles.
            unknown = state.outcome() == "unknown"
            self._settling[task] = _Settling(request=request, commit_sent=state.commit_sent)
            bound = SETTLE_TIMEOUT_SECONDS if state.commit_sent else ROLLBACK_TIMEOUT_SECONDS
            timer = loop.call_later(bound, task.cancel)
            task.add_done_callback(
                functools.partial(
                    self._settled,
                    unknown=unknown,
                    answered_at=loop.time(),
                    timer=timer,
                    on_settled=on_settled,
                )
            )
            raise

    def _settled(
        self,
        task: asyncio.Future[Result],
        *,
        unknown: bool,
        answered_at: float,
        timer: asyncio.TimerHandle,
        on_settled: OnSettled | None,
    ) -> None:
        info = self._settling.pop(task, None)
        request = info.request if info is not None else ""
        timer.cancel()
        error = None if task.cancelled() else task.exception()
        if not unknown:  # answered before its Commit: it could not commit, and did not
            if error is None and not task.cancelled() and not task.result().replayed:
                log.error(
                    "a write abandoned before its Commit committed: this is a bug (request %s)",
                    request,
                )
            return
        seconds = asyncio.get_running_loop().time() - answered_at
        settled: Settled
        if task.cancelled():
            why = "shutdown" if self._closing else "timeout"
            settled = Settled(None, None, seconds, error=why, request=request)
        elif error is None:
            settled = Settled(True, task.result(), seconds, request=request)
        elif isinstance(error, (_Abandoned, *_COMMIT_REFUSED)):
            settled = Settled(False, None, seconds, error=type(error).__name__, request=request)
        else:
            cause = error.cause if isinstance(error, _CommitUnknown) else error
            settled = Settled(None, None, seconds, error=type(cause).__name__, request=request)
        event: str | None = None
        if on_settled is not None:
            try:
                event = on_settled(settled)
            except Exception:
                log.exception("recording how a write cut by its deadline settled failed")
        where = f"request {request}, audit event {event or '-'}"
        if settled.committed:
            log.info(
                "a write cut by its deadline committed after all, %.1f s after its caller was "
                "answered (%s; retries with its Idempotency-Key will get its response)",
                seconds,
                where,
            )
        elif settled.committed is False:
            log.info("a write cut by its deadline did not commit: %s (%s)", settled.error, where)
        elif settled.error == "shutdown":
            log.error(
                "a write whose Commit was in flight had not settled at shutdown: whether it "
                "committed stays unknown (%s)",
                where,
            )
        elif settled.error == "timeout":
            log.warning(
                "a write cut by its deadline with its Commit in flight did not settle within "
                "%g s: whether it committed stays unknown (%s)",
                SETTLE_TIMEOUT_SECONDS,
                where,
            )
        else:
            log.warning(
                "a write cut by its deadline with its Commit in flight ended with %s: whether "
                "it committed stays unknown (%s)",
                settled.error,
                where,
            )

    async def _write(
        self,
        state: _WriteState,
        database: Any,
        query: CompiledQuery,
        params: dict[str, Any],
        types: dict[str, Any],
        tags: Tags,
        deadline: float,
        key: idem.IdempotencyKey | None,
        in_transaction: InTransaction | None,
        guard: Guard | None = None,
    ) -> Result:
        seen: dict[str, Any] = {}

        async def work(transaction: Any) -> Result:
            if state.answered:  # a retry after ABORTED, once the caller has been answered
                state.abandoned = True
                raise _Abandoned
            state.began, state.key_clear = True, False
            seen["tx"] = transaction
            if self.hooks.attempt is not None:
                self.hooks.attempt(transaction)
            transaction.commit = functools.partial(guarded_commit, transaction.commit)
            if key is not None:
                state.note_lookup()
                stored = await self._lookup(transaction, key, state)
                if self.hooks.after_lookup is not None:
                    await self.hooks.after_lookup()
                if stored is not None:
                    if stored.request_hash != key.request_hash:
                        state.key_clear = True  # no record of this request
                        raise idem.KeyReused(
                            "this Idempotency-Key was used for a different request; "
                            "use a new key for a new request"
                        )
                    raise _Replay(stored.result)
                state.key_clear = True
            if guard is not None:
                await guard(transaction)
            if state.answered:  # cut while its key was read: its statement never starts
                state.abandoned = True
                raise _Abandoned
            state.note_sent()
            result = await self._statement(transaction, query, params, types, tags, deadline)
            if self.hooks.after_statement is not None:
                await self.hooks.after_statement()
            if key is not None:
                idem.store(transaction, key, result, now=dt.datetime.now(dt.UTC))
            if in_transaction is not None:
                outcome = in_transaction(transaction, result)
                if inspect.isawaitable(outcome):
                    await outcome
            if state.answered:  # the library rolls the transaction back
                state.abandoned = True
                raise _Abandoned
            return result

        async def guarded_commit(
            commit: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
        ) -> Any:
            # The only way into a Commit: refused once the caller has been answered; marked
            # "sent" before the first await, so a deadline never misses a Commit in flight.
            if state.answered:
                state.abandoned = True
                raise _Abandoned
            state.commit_sent = True
            state.commit_sends = 0
            sending = _SENDING.set(state)
            try:
                if self.hooks.before_commit is not None:
                    await self.hooks.before_commit()
                return await commit(*args, **kwargs)
            except _COMMIT_REFUSED as exc:
                if state.commit_sends > 1:  # an earlier send may have committed, its answer lost
                    raise _CommitUnknown(exc) from exc
                state.commit_sent = False  # refused: this attempt certainly did not commit
                raise
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                raise _CommitUnknown(exc) from exc
            finally:
                self.commits_sent += state.commit_sends
                _SENDING.reset(sending)

        options: dict[str, Any] = {
            "transaction_tag": tags.transaction,
            "timeout_secs": self._remaining(deadline),
        }
        if self._emulator:
            options["default_retry_delay"] = EMULATOR_RETRY_DELAY
        if not _count_commit_sends(database) and not self._uncounted_warned:
            self._uncounted_warned = True
            log.warning(
                "cannot count Commit sends with this client library: a refused Commit counts as "
                "sent once"
            )
        try:
            result: Result = await database.run_in_transaction(work, **options)
        except _Replay as replay:
            return replay.result
        except (asyncio.CancelledError, _Abandoned):
            await self._roll_back(seen.get("tx"))  # never raises: the abandonment reason stays
            raise
        except Exception as exc:
            if state.abandoned:  # the library's own rollback failed after _Abandoned: still
                raise _Abandoned from exc  # abandoned (no Commit sent since), not "unknown"
            raise
        committed = getattr(seen.get("tx"), "committed", None)
        result.commit_timestamp = to_json(committed) if committed is not None else None
        return result

    async def _statement(
        self,
        transaction: Any,
        query: CompiledQuery,
        params: dict[str, Any],
        types: dict[str, Any],
        tags: Tags,
        deadline: float,
    ) -> Result:
        result = Result(is_dml=True)
        options = request_options(query, tags.request)
        if not query.sql.returning:
            result.row_count = await transaction.execute_update(
                query.model.sql,
                params=params,
                param_types=types,
                timeout=self._remaining(deadline),
                request_options=options,
            )
            return result
        stream = await transaction.execute_sql(
            query.model.sql,
            params=params,
            param_types=types,
            timeout=self._remaining(deadline),
            request_options=options,
        )
        raw = [row async for row in stream]  # read to the end: the statement's stats come last
        result.columns = [f.name for f in stream.fields] if stream.fields else []
        result.types = _types(query, stream.fields)
        limit = query.model.max_rows
        result.rows = _rows(result.columns, raw[:limit])
        result.truncated = len(raw) > limit
        stats = stream.stats
        exact = getattr(stats, "row_count_exact", None) if stats is not None else None
        result.row_count = int(exact) if exact else len(raw)
        return result

    async def stored_answer(self, query: CompiledQuery, key: idem.IdempotencyKey) -> Result | None:
        """The stored answer of a keyed write that will not run (its budget refused it): the
        key's record read in a single-use strong read-only snapshot (a point read: no read-write
        transaction, no lock), within the query's timeout, under the query's identity. The
        answer when the record is this very request's (its fingerprint); None when there is
        none, it is another request's, or the read failed (the caller's refusal stands)."""
        try:
            database = self.databases.aio(query.model.identity)
            async with asyncio.timeout(query.model.timeout_seconds):
                async with database.snapshot() as snapshot:
                    stored = await idem.lookup(snapshot, key, now=dt.datetime.now(dt.UTC))
        except Exception as exc:  # noqa: BLE001 - the refusal is answered instead
            log.warning(
                "reading the Idempotency-Key record of a refused write to query %r failed: %s",
                query.name,
                f"{type(exc).__name__}: {exc}",
            )
            return None
        if stored is None or stored.request_hash != key.request_hash:
            return None
        return stored.result

    async def _lookup(
        self, transaction: Any, key: idem.IdempotencyKey, state: _WriteState
    ) -> idem.Stored | None:
        try:
            return await idem.lookup(transaction, key, now=dt.datetime.now(dt.UTC))
        except (gexc.InvalidArgument, gexc.NotFound) as exc:
            if idem.TABLE in str(exc):
                state.key_clear = True  # no table: no keyed write ever committed here
                log.error(
                    "the Idempotency-Key table is missing: run `spangate init-db` (%s, %s)",
                    grpc_code(exc),
                    withheld(exc),
                )
                raise SpannerError(
                    "Idempotency-Key is not set up on this gateway's database",
                    status=500,
                    code="idempotency-table-missing",
                    spanner_code=type(exc).__name__,
                ) from exc
            raise

    async def _roll_back(self, transaction: Any) -> None:
        """A write cut by its deadline: roll its transaction back before answering (and, against
        the emulator, before the next writer goes), so it holds no locks until Spanner expires
        it; the emulator aborts every other read-write transaction while one is open. Best
        effort, bounded: a commit already sent may have landed (hence Idempotency-Key)."""
        if transaction is None or getattr(transaction, "committed", None) is not None:
            return
        try:
            await asyncio.wait_for(transaction.rollback(), ROLLBACK_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - best effort; Spanner expires it
            log.info("rolling back an abandoned write failed: %s", type(exc).__name__)
