"""Spanner failures -> stable codes and statuses (``SpannerError``), one table for all callers.

    gRPC status (google.api_core)        HTTP  code
    ALREADY_EXISTS                        409  conflict
    NOT_FOUND of an interleaved row's
    parent row (an INSERT whose parent
    key names no row)                     409  parent-row-missing
    FAILED_PRECONDITION                   409  precondition-failed
    ABORTED (after the client's retries)  409  aborted
    INVALID_ARGUMENT, OUT_OF_RANGE        400  statement-rejected
        ... "too many mutations"          422  too-many-mutations
    DEADLINE_EXCEEDED, our own deadline,
    a write's Commit failing without
    saying whether it committed          504  timeout
    UNAVAILABLE, RESOURCE_EXHAUSTED,
    a retry budget spent, "Session not
    found", a deadline spent reconnecting 503  spanner-unavailable (Retry-After)
    PERMISSION_DENIED                     500  identity-lacks-grant (logged as an error)
    NOT_FOUND (table, column, database),
    INVALID_ARGUMENT naming a missing table
    or column (the schema changed),
    UNIMPLEMENTED (e.g. a STRUCT column)  500  statement-invalid (logged as an error)
    anything else                         500  spanner-error (logged as an error)

A 500 here is a mismatch between the policy, the grants and the schema: an operator's problem,
never the caller's. No detail carries Spanner's message (it names tables, columns and SQL).

Nor does the log: Spanner's messages can quote a row's value or a parameter (``Bad int64 value:
wile@acme.example``, a unique index's key), which may be a masked column, an ``audit.redact``
parameter or anything else the log must not hold. The log line names the gRPC code, the query,
its identity and role, and a digest of the message (``withheld``): HMAC-SHA256 under a key drawn
at random when the process starts, its first 12 hex digits. Equal messages have equal digests
in one process's log; the digest cannot be used to test a guess of what the message said.
Spanner's words for a schema or grant mismatch come from ``spangate policy check --database``
(PLAN: nothing runs, so no row is quoted).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

from google.api_core import exceptions as gexc

from gateway.errors import SpannerError

__all__ = [
    "RETRY_AFTER_SECONDS",
    "grpc_code",
    "map_error",
    "timeout_error",
    "unavailable_error",
    "withheld",
]

log = logging.getLogger("spangate.spanner")

RETRY_AFTER_SECONDS = 2
_DIGEST_KEY = secrets.token_bytes(32)  # per process: a digest tells messages apart, no more
_CHECK = "`spangate policy check --database` shows Spanner's words"

_TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (gexc.AlreadyExists, 409, "conflict"),
    (gexc.FailedPrecondition, 409, "precondition-failed"),
    (gexc.Aborted, 409, "aborted"),
    (gexc.InvalidArgument, 400, "statement-rejected"),
    (gexc.OutOfRange, 400, "statement-rejected"),
    (gexc.DeadlineExceeded, 504, "timeout"),
    (gexc.ServiceUnavailable, 503, "spanner-unavailable"),
    (gexc.ResourceExhausted, 503, "spanner-unavailable"),
    (gexc.RetryError, 503, "spanner-unavailable"),
    (gexc.PermissionDenied, 500, "identity-lacks-grant"),
    (gexc.NotFound, 500, "statement-invalid"),
    (gexc.MethodNotImplemented, 500, "statement-invalid"),
)

_DETAILS = {
    "conflict": "a row with this key already exists",
    "parent-row-missing": "the row's parent row does not exist: a row of an interleaved table "
    "can only be written under an existing parent row",
    "precondition-failed": "the statement's precondition failed",
    "aborted": "the transaction was aborted by concurrent work and its retries ran out",
    "statement-rejected": "Spanner rejected the statement with these parameters (for example a "
    "value longer than its column allows); the log has Spanner's status code for this request",
    "timeout": "the statement did not finish within its timeout",
    "spanner-unavailable": "Spanner is unavailable; retry later",
    "identity-lacks-grant": "the statement's identity lacks a grant it needs (see the logs)",
    "statement-invalid": "the statement refers to something the database does not have "
    "(see the logs)",
    "too-many-mutations": "the write needs more mutations than Spanner allows in one commit",
}


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


def withheld(exc: BaseException) -> str:
    """What a log line says of Spanner's message (see the module doc): never its words."""
    text = _message(exc).encode("utf-8", "backslashreplace")
    digest = hmac.new(_DIGEST_KEY, text, hashlib.sha256).hexdigest()[:12]
    return f"Spanner's message withheld (digest {digest})"


def grpc_code(exc: BaseException) -> str:
    """The gRPC status name of a google.api_core error (``INVALID_ARGUMENT``), else its type."""
    return getattr(getattr(exc, "grpc_status_code", None), "name", None) or type(exc).__name__


_SCHEMA_MISMATCH = re.compile(
    r"(Table|Column|Index|Database) not found|Unrecognized name|No matching signature"
)


# Spanner's words (production, then the emulator) for a write into an interleaved table whose
# parent key names no row: the database's state, not the statement, is at fault.
_PARENT_MISSING = re.compile(
    r"Parent row .* is missing|not found in parent table", re.IGNORECASE | re.DOTALL
)


def _session_lost(exc: BaseException) -> bool:
    return isinstance(exc, gexc.NotFound) and "Session not found" in _message(exc)


def unavailable_error(detail: str | None = None) -> SpannerError:
    return SpannerError(
        detail or _DETAILS["spanner-unavailable"],
        status=503,
        code="spanner-unavailable",
        spanner_code="UNAVAILABLE",
        retry_after=RETRY_AFTER_SECONDS,
    )


def timeout_error(seconds: float, *, outcome: str | None = None) -> SpannerError:
    """504 ``timeout``; for a write, ``outcome`` says whether it may have committed."""
    detail = f"the statement did not finish within its timeout ({seconds:g} s)"
    if outcome == "unknown":
        detail += (
            "; the write may or may not have committed: retry it with the same Idempotency-Key"
        )
    elif outcome == "not-committed":
        detail += "; the write did not commit"
    return SpannerError(
        detail, status=504, code="timeout", spanner_code="DEADLINE_EXCEEDED", outcome=outcome
    )


def map_error(
    exc: BaseException,
    *,
    query: str | None = None,
    identity: str | None = None,
    role: str | None = None,
) -> SpannerError:
    """A Spanner/gRPC error -> ``SpannerError`` with a stable code and status (table above).

    ``query``, ``identity`` and ``role`` only enrich the log line of a 400 or a 5xx, which
    never holds Spanner's message (``withheld``: it may quote a row's value)."""
    name = type(exc).__name__
    message = _message(exc)
    shown = withheld(exc)
    code_name = grpc_code(exc)
    where = f"query {query!r} as identity {identity!r} (role {role!r})" if query else "a statement"
    if _session_lost(exc):
        # The session vanished (server restart, expiry): nothing ran; the client makes a new one.
        log.warning("spanner session lost running %s: %s", where, shown)
        return unavailable_error()
    if isinstance(exc, gexc.NotFound) and _PARENT_MISSING.search(message):
        # An INSERT under a parent key with no row (e.g. a tenant bound from a claim that has
        # no Tenants row): a conflict with the database's state, as ALREADY_EXISTS is.
        return SpannerError(
            _DETAILS["parent-row-missing"],
            status=409,
            code="parent-row-missing",
            spanner_code=code_name,
        )
    if isinstance(exc, gexc.InvalidArgument | gexc.FailedPrecondition) and (
        "too many mutations" in message.lower() or "mutation limit" in message.lower()
    ):
        return SpannerError(
            _DETAILS["too-many-mutations"],
            status=422,
            code="too-many-mutations",
            spanner_code=code_name,
        )
    if isinstance(exc, gexc.InvalidArgument) and _SCHEMA_MISMATCH.search(message):
        # The statement no longer fits the schema (it was PLAN-checked at load): not the caller's.
        log.error(
            "spanner %s running %s: %s (the schema changed under the policy; %s)",
            code_name,
            where,
            shown,
            _CHECK,
        )
        return SpannerError(
            _DETAILS["statement-invalid"],
            status=500,
            code="statement-invalid",
            spanner_code=code_name,
        )
    for kind, status, code in _TABLE:
        if isinstance(exc, kind):
            if status >= 500 and status != 503:
                log.error(
                    "spanner %s running %s: %s (a policy/grant/schema mismatch; %s)",
                    code_name,
                    where,
                    shown,
                    _CHECK,
                )
            elif status == 400:
                log.warning("spanner %s running %s: %s", code_name, where, shown)
            # Spanner's own message names tables, columns and SQL, and may quote values: it
            # reaches neither the caller nor the log.
            detail = _DETAILS.get(code, "the statement failed")
            retry = RETRY_AFTER_SECONDS if status == 503 else None
            return SpannerError(
                detail, status=status, code=code, spanner_code=code_name, retry_after=retry
            )
    log.error("unexpected spanner error %s running %s: %s", name, where, shown)
    return SpannerError(
        "the statement failed", status=500, code="spanner-error", spanner_code=code_name
    )
