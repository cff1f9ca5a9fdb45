"""The app's side of the audit trail: a CallRecord from the ASGI scope, and recording it.

``record_call`` never lets a request go unrecorded or be answered as if it were recorded:

- the event cannot be built (a bug): a minimal ``fallback_event`` is recorded instead, and the
  caller gets 500 ``internal`` (nothing is served that was not fully audited);
- a sink cannot take it: the caller gets 503 ``audit-unavailable`` (fail closed); for a write
  whose statement ran, the problem keeps the write's ``outcome`` (``committed`` included).

``in_transaction_hook`` gives the executor what to run inside a write's own transaction when a
Spanner sink is configured: the event's row is inserted there, so it commits with the write.

``settle_hook`` gives the executor what to call when a write answered 504 with outcome
``unknown`` (its Commit was in flight) has settled: a follow-up event with the same request id,
a new insertId and ``metadata.settlement`` (committed or not, the insertId of the event it
corrects, the Spanner sink's row, how long after the answer), queued after the request's own
event, so the trail agrees with the database, and logged (a failing sink only logs its own
failure). A Commit whose outcome stays unknown gets none. The hook returns the insertId of the
request's event, for the executor's log line.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from gateway.audit.chain import Members
from gateway.audit.event import (
    CallRecord,
    build_event,
    build_event_encoded,
    fallback_event,
    write_outcome,
)
from gateway.audit.origin import IPNetwork, client_address, trace_context
from gateway.audit.spanner_sink import SpannerSink
from gateway.audit.trail import AuditTrail
from gateway.errors import AuditUnavailable, GatewayError
from gateway.http import routed_path
from gateway.policy.compiled import CompiledPolicy
from gateway.spanner.execute import OnSettled, Result, Settled

__all__ = ["in_transaction_hook", "new_call", "record_call", "record_nowait", "settle_hook"]

log = logging.getLogger("spangate.audit")


def new_call(
    scope: MutableMapping[str, Any], rid: str, started: float, trusted: Sequence[IPNetwork]
) -> CallRecord:
    """The CallRecord of an HTTP request: the raw path as routed, client through trusted proxies,
    user agent, trace."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    peer = scope.get("client")
    forwarded = [v for k, v in headers if k == b"x-forwarded-for"] if trusted else []
    trace = trace_context(
        next((v for k, v in headers if k == b"traceparent"), None),
        next((v for k, v in headers if k == b"x-cloud-trace-context"), None),
    )
    return CallRecord(
        request_id=rid,
        method=scope["method"],
        path=routed_path(scope),
        started=started,
        client=client_address(peer[0] if peer else None, forwarded, trusted),
        user_agent=next((v.decode("latin-1") for k, v in headers if k == b"user-agent"), None),
        trace=trace[0] if trace else None,
        span=trace[1] if trace else None,
    )


def _event(
    call: CallRecord,
    policy: CompiledPolicy,
    key: bytes | None,
    database: str | None,
    max_bytes: int,
) -> tuple[dict[str, Any], Members | None]:
    """The event of ``call`` and its encoded members (``build_event_encoded``)."""
    try:
        return build_event_encoded(
            call, policy, key=key, database=database, max_bytes=max_bytes
        )
    except Exception:
        log.exception("the audit event of request %s could not be built", call.request_id)
        outcome = write_outcome(call)  # a write that ran still says whether it committed
        call.error = GatewayError("an unexpected error occurred; see the logs for this request id")
        if outcome is not None:
            call.error.extra["outcome"] = outcome
        call.status = 500
        call.result = None
        event = fallback_event(call, status=500, code="internal", policy=policy, key=key)
        return event, None


async def record_call(
    audit: AuditTrail,
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None = None,
) -> bool:
    """Record ``call`` (its ``status`` and ``error`` set). True when the answer had to change:
    ``call.status``/``call.error`` then say what to answer instead (500 or 503)."""
    before = (call.status, call.error)
    result = call.result
    # The row added in the write's transaction is durable only when that transaction committed:
    # not when the write failed, and not for an Idempotency-Key replay (the attempt that found
    # the record rolled back; an earlier, aborted attempt may have run the hook).
    committed = result is not None and result.commit_timestamp is not None and not result.replayed
    durable_in = call.extra.get("row_in_transaction", ()) if committed else ()
    if call.write and not durable_in and _spanner_sink(audit) is not None:
        # The write failed or replayed: its own row normally never committed, but a write cut by
        # its deadline is still settling and may commit it yet. A new insertId keeps this event
        # from colliding with that row (the hook keeps the insertId it was made with).
        call.insert_id = secrets.token_hex(16)
    event, members = _event(call, policy, key, database, audit.max_event_bytes)
    try:  # the event does not change from here on: its members stay valid for sealing
        await audit.record(event, write=call.write, durable_in=durable_in, members=members)
    except AuditUnavailable as exc:
        outcome = write_outcome(call)
        if outcome is not None:  # a write that ran: the 503 still says whether it committed
            exc = AuditUnavailable(exc.detail)
            exc.extra["outcome"] = outcome
        call.error, call.status = exc, exc.status
    finally:
        _recorded(audit, call, policy, event, key=key, database=database)
    return (call.status, call.error) != before


def record_nowait(
    audit: AuditTrail,
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None = None,
) -> None:
    """Queue the event of a request that is being cancelled (it cannot wait any more).

    A cancelled write may still commit its own row (the write settles in the background, after
    the hook may have run, or before it runs): with a Spanner sink its event gets a new
    insertId, so that row and this event never collide."""
    if call.write and _spanner_sink(audit) is not None:
        call.insert_id = secrets.token_hex(16)
    event, members = _event(call, policy, key, database, audit.max_event_bytes)
    audit.record_nowait(event, write=call.write, members=members)
    _recorded(audit, call, policy, event, key=key, database=database)


def settle_hook(
    audit: AuditTrail,
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None = None,
) -> OnSettled:
    """What the executor calls when a write answered with outcome ``unknown`` has settled."""

    def settled(outcome: Settled) -> str | None:
        """Queue the follow-up; return the insertId of the request's event (for the log)."""
        event = call.extra.get("recorded_as", call.insert_id)
        if outcome.committed is None:
            return str(event)  # still unknown (the executor logs it): "unknown" stands
        call.extra["settled"] = outcome
        if "recorded_as" in call.extra:  # else the request's own event records it, after itself
            _record_settlement(audit, call, policy, key=key, database=database)
        return str(event)

    return settled


def _recorded(
    audit: AuditTrail,
    call: CallRecord,
    policy: CompiledPolicy,
    event: dict[str, Any],
    *,
    key: bytes | None,
    database: str | None,
) -> None:
    call.extra["recorded_as"] = event["insertId"]
    if "settled" in call.extra:
        _record_settlement(audit, call, policy, key=key, database=database)


def _record_settlement(
    audit: AuditTrail,
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None,
) -> None:
    """The follow-up event of a write whose caller got outcome ``unknown``: what it got
    (``httpRequest.status``), and what happened (``status``, ``response``, ``settlement``)."""
    outcome: Settled = call.extra.pop("settled")
    committed = bool(outcome.committed)
    then = dataclasses.replace(
        call,
        insert_id=secrets.token_hex(16),
        result=outcome.result if committed else call.result,
        status=200 if committed else call.status,
        error=None if committed else call.error,
    )
    try:
        # room for the settlement block added below, within the trail's maximum event size
        event = build_event(
            then, policy, key=key, database=database, max_bytes=audit.max_event_bytes - 512
        )
    except Exception:
        log.exception("the follow-up event of request %s could not be built", call.request_id)
        return
    payload = event["protoPayload"]
    event["httpRequest"]["status"] = call.status  # what the caller got
    event["severity"] = "WARNING"
    if payload["response"] is not None:
        payload["response"]["outcome"] = "committed" if committed else "not-committed"
    rows = call.extra.get("row_in_transaction", ())
    payload["metadata"]["settlement"] = {
        "outcome": "committed" if committed else "not-committed",
        "corrects": call.extra["recorded_as"],
        "rowInTransaction": call.extra.get("row_insert_id") if committed and rows else None,
        "settledAfter": f"{outcome.seconds:.6f}s",
    }
    # In the log too: a sink that cannot take the follow-up only logs that it failed.
    log.warning(
        "follow-up audit event %s of request %s: %s (corrects event %s, caller got %s)",
        event["insertId"],
        call.request_id,
        payload["metadata"]["settlement"]["outcome"],
        call.extra["recorded_as"],
        call.status,
    )
    audit.record_nowait(event, write=True)


def _spanner_sink(audit: AuditTrail) -> SpannerSink | None:
    return next((w.sink for w in audit.writers if isinstance(w.sink, SpannerSink)), None)


def in_transaction_hook(
    audit: AuditTrail,
    call: CallRecord,
    policy: CompiledPolicy,
    *,
    key: bytes | None,
    database: str | None = None,
) -> Callable[[Any, Result], None] | None:
    """A function for the executor to call inside a write's transaction, after the statement and
    before the commit, or None when no Spanner sink is configured."""
    sink = _spanner_sink(audit)
    if sink is None:
        return None

    insert_id = call.insert_id  # the row's, even if the call's event later takes a new one

    def hook(transaction: Any, result: Result) -> None:
        # Runs on the event loop (the executor's AsyncClient transaction), once per attempt that
        # ran its statement: an aborted attempt is retried, and its row is discarded with it.
        now = dataclasses.replace(call, result=result, status=200, error=None, insert_id=insert_id)
        event = build_event(
            now, policy, key=key, database=database, max_bytes=audit.max_event_bytes - 64
        )
        if event["protoPayload"]["response"] is not None:
            event["protoPayload"]["response"]["outcome"] = "committed"  # the row exists only so
        sink.insert_in(transaction, event)
        call.extra["row_in_transaction"] = (sink.name,)
        call.extra["row_insert_id"] = insert_id

    return hook
