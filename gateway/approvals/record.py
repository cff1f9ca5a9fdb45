"""An approval request as the gateway stores it, and the rules of its life (pure).

States: ``pending`` (made by an allowed call to a route with ``approval:``), then ``approved`` or
``rejected`` (by an approver, ``policy.approval.decider_verdict``), then ``used`` (an approved
one, once its statement ran). ``expired`` is not stored: a pending request past its ``ExpiresAt``
(``ttl`` after it was made) or an approval past its ``ExpiresAt`` (``ttl`` after it was given) is
expired, whatever its row says.

A request binds its requester (issuer URL and subject, and the actors of a delegated token), its
route (method and template), its query and the exact values of every bound parameter, claim-bound
ones included: ``request_hash`` is SHA-256 over their canonical JSON (the Idempotency-Key's form,
``spanner.idempotency.canonical``), so equal values hash equally and any difference shows. The
row keeps the values for the approver to read, those ``audit.redact`` names as their keyed hash
(never in clear, as in the audit trail).

``replay_refusal`` says why a call repeated with ``Approval-Id`` may not run (None: it may);
``decision_refusal`` why a principal may not decide a request. Codes: ``errors.APPROVAL_CODES``.

``ListCursor`` is where a page of ``GET /approvals`` ends (the list's keyset, ``CreatedAt`` to
the nanosecond and ``ApprovalId``, and the state listed): base64url of compact JSON, no secret
(it only positions; the approver's scopes select the rows whatever it says), read back strictly.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.auth.principal import Principal
from gateway.errors import ApprovalRefused, CursorRefused
from gateway.policy.approval import parties
from gateway.policy.types import SpannerTimestamp, TypeProblem, parse_timestamp
from gateway.spanner.idempotency import canonical_request

__all__ = [
    "MAX_CURSOR_CHARS",
    "ApprovalRecord",
    "ListCursor",
    "State",
    "decision_refusal",
    "new_approval_id",
    "parse_approval_id",
    "parse_list_cursor",
    "replay_refusal",
    "request_hash",
    "scope_hash",
    "shown_state",
]

State = Literal["pending", "approved", "rejected", "used"]
STATES: tuple[str, ...] = ("pending", "approved", "rejected", "used")
_ID = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" would let a trailing newline through
MAX_REASON_CHARS = 1000


def new_approval_id() -> str:
    """128 random bits, 32 lowercase hex digits: unguessable, so an id names one request."""
    return secrets.token_hex(16)


def parse_approval_id(value: object) -> str:
    """An approval id as a caller sent it (header, tool argument, path), or 400
    ``approval-id-invalid``."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ApprovalRefused(
            "an approval id is the 32 lowercase hex digits of a 202 approval-required answer",
            code="approval-id-invalid",
        )
    return value


def request_hash(
    method: str, route: str, query: str, values: Mapping[str, Any], key: bytes | None = None
) -> str:
    """SHA-256 (hex) of a call's route, query and every bound value, canonical JSON; an
    HMAC-SHA256 under ``key`` when there is one (the gateway's: derived from the audit key). The
    values include ``audit.redact``'s, which the table shows only as their keyed hash: a plain
    digest would let a reader of the table try candidates for a low-entropy redacted value, so
    the gateway keys it whenever it has a key (and it has one whenever the policy redacts)."""
    text = canonical_request(method, route, query, values)
    data = b"spangate-approval-v1\0" + text.encode("ascii")
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def scope_hash(
    method: str, route: str, query: str, values: Mapping[str, Any], key: bytes | None = None
) -> str:
    """The digest of a request's ``approval.match`` values (``policy.approval.match_names``),
    keyed as ``request_hash`` is and apart from it: an approver whose own token binds the same
    values to the route computes the same digest, and sees and decides the request; the list
    filters on it. A domain of its own, so it never equals a request hash."""
    text = canonical_request(method, route, query, values)
    data = b"spangate-approval-scope-v1\0" + text.encode("ascii")
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ApprovalRecord:
    """One row of the approvals table (``spanner/approvals.py``)."""

    approval_id: str
    state: State
    issuer: str  # the policy's name of the requester's issuer
    iss: str  # the requester's token iss
    subject: str
    actors: tuple[str, ...]  # the requester's delegation chain (act.sub), current first
    route: str  # "METHOD /template"
    query: str
    request_hash: str
    params: Mapping[str, Any]  # as shown to approvers: redacted ones as their keyed hash
    approvers: tuple[str, ...]
    request_id: str  # of the call that made it
    created_at: dt.datetime
    expires_at: dt.datetime
    decided_at: dt.datetime | None = None
    decider_iss: str | None = None
    decider_subject: str | None = None
    # the decider's delegation chain (act.sub), current first: an agent deciding for a lead;
    # () for a person's own token, and for a row written before the column existed
    decider_actors: tuple[str, ...] = ()
    reason: str | None = None
    used_at: dt.datetime | None = None
    used_by: str | None = None  # the request id of the call that ran it
    # scope_hash of its match values; None on a row written before the column existed (only its
    # requester sees such a row)
    scope: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def parties(self) -> frozenset[tuple[str, str]]:
        """The requester and the actors acting in its request (``policy.approval.parties``)."""
        return frozenset({(self.iss, self.subject), *((self.iss, a) for a in self.actors if a)})

    def requested_by(self, principal: Principal) -> bool:
        return (principal.iss, principal.subject) == (self.iss, self.subject)

    def same_caller(self, principal: Principal) -> bool:
        """The requester as it asked: the same subject through the same delegation chain (an
        agent's approval is not another agent's, nor its subject's own)."""
        actors = tuple(a for a in principal.actors if a)
        return self.requested_by(principal) and actors == tuple(self.actors)

    def expired(self, now: dt.datetime) -> bool:
        return self.state in ("pending", "approved") and self.expires_at <= now

    def view(self, now: dt.datetime) -> dict[str, Any]:
        """The request as the API shows it (its requester and its approvers see it)."""
        return {
            "id": self.approval_id,
            "state": shown_state(self, now),
            "route": self.route,
            "query": self.query,
            "params": dict(self.params),
            "approvers": list(self.approvers),
            "requester": {"iss": self.iss, "sub": self.subject, "actors": list(self.actors)},
            "created_at": _time(self.created_at),
            "expires_at": _time(self.expires_at),
            "decided_at": _time(self.decided_at),
            "decided_by": None
            if self.decider_subject is None
            else {
                "iss": self.decider_iss,
                "sub": self.decider_subject,
                "actors": list(self.decider_actors),
            },
            "reason": self.reason,
            "used_at": _time(self.used_at),
        }


def _time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shown_state(record: ApprovalRecord, now: dt.datetime) -> str:
    """The state a caller sees: ``expired`` for a pending or approved one past its time."""
    return "expired" if record.expired(now) else record.state


def replay_refusal(
    record: ApprovalRecord | None,
    principal: Principal,
    *,
    route: str,
    query: str,
    digest: str,
    now: dt.datetime,
    keyed: bool = False,
) -> ApprovalRefused | None:
    """Why a call carrying this approval may not run (None: it may). Another caller, route,
    query or value, or no such approval: ``approval-mismatch`` (nothing about the approval is
    told). ``keyed``: the call carries an Idempotency-Key, so a ``used`` approval is let
    through to the write, whose key may hold its first answer (its transaction checks again)."""
    if (
        record is None
        or not record.same_caller(principal)
        or record.route != route
        or record.query != query
        or not secrets.compare_digest(record.request_hash, digest)
    ):
        return ApprovalRefused(
            "this Approval-Id approves no call of yours with this route and these values; "
            "repeat the call exactly as it was approved",
            code="approval-mismatch",
        )
    if record.state == "used":
        if keyed:
            return None
        return ApprovalRefused(
            "this approval was used: its statement ran once; ask for a new approval",
            code="approval-used",
        )
    if record.state == "rejected":
        return ApprovalRefused(
            "an approver rejected this request" + (f": {record.reason}" if record.reason else ""),
            code="approval-rejected",
        )
    if record.expired(now):
        return ApprovalRefused(
            "this approval has expired; make the call again for a new one",
            code="approval-expired",
        )
    if record.scope is None:  # made before approval.match: who decided it was not checked
        return ApprovalRefused(
            "this request was made before approvals were matched to their approvers' tenant "
            "(an upgrade); make the call again for a new one",
            code="approval-expired",
        )
    if record.state == "pending":
        return ApprovalRefused("nobody has decided this request yet", code="approval-pending")
    return None


def decision_refusal(
    record: ApprovalRecord, principal: Principal, now: dt.datetime
) -> ApprovalRefused | None:
    """Why ``principal`` may not decide ``record`` now, beyond its roles (the caller checks
    those under the live policy): a party of the request, or a request no longer pending."""
    if parties(principal) & record.parties:
        return ApprovalRefused(
            "nobody decides a request they took part in: another approver must",
            code="approval-own-request",
        )
    if record.expired(now):
        return ApprovalRefused("this request has expired", code="approval-expired")
    if record.state != "pending":
        return ApprovalRefused(f"this request was {record.state} already", code="approval-decided")
    return None


def check_reason(value: object) -> str | None:
    """An approver's optional reason: a string of at most ``MAX_REASON_CHARS``."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REASON_CHARS:
        from gateway.errors import BadRequest

        raise BadRequest(
            f"reason is a string of at most {MAX_REASON_CHARS} characters", code="body-invalid"
        )
    return value


def parse_states(values: Sequence[str]) -> str:
    """``?state=`` of ``GET /approvals``: one of the states, ``pending`` by default."""
    from gateway.errors import BadRequest

    if not values:
        return "pending"
    if len(values) > 1 or values[0] not in STATES:
        raise BadRequest(f"state is one of {', '.join(STATES)} (once)", code="query-invalid")
    return values[0]


MAX_CURSOR_CHARS = 256  # a cursor is about 120; anything longer is refused before it is decoded
_CURSOR_TEXT = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CURSOR_CHARS}}}")
# CreatedAt as the cursor writes it: UTC, the fraction to the nanosecond without trailing zeros
_CURSOR_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,8}[1-9])?Z"
)


@dataclass(frozen=True)
class ListCursor:
    """Where a page of ``GET /approvals?state=...`` ended: its last row's ``CreatedAt`` (RFC
    3339, UTC, to the nanosecond Spanner keeps: no row of the same microsecond is skipped or
    answered twice) and ``ApprovalId``, the list's order (``ORDER BY CreatedAt, ApprovalId``).
    The next page is the rows strictly after it, of the same ``state``."""

    state: str
    created_at: str
    approval_id: str

    @classmethod
    def after(cls, record: ApprovalRecord) -> ListCursor:
        from gateway.spanner.results import rfc3339

        return cls(record.state, rfc3339(record.created_at), record.approval_id)

    @property
    def timestamp(self) -> SpannerTimestamp:
        """``created_at`` with its nanoseconds (what the list binds)."""
        return parse_timestamp(self.created_at)

    def text(self) -> str:
        """The cursor as a caller gets it: base64url (no padding) of compact JSON."""
        data = json.dumps(
            {"i": self.approval_id, "s": self.state, "t": self.created_at},
            separators=(",", ":"),
            sort_keys=True,
        ).encode("ascii")
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_list_cursor(values: Sequence[str], state: str) -> ListCursor | None:
    """``?cursor=`` of ``GET /approvals`` (None: the first page), or 400 ``cursor-invalid``:
    given twice, longer than ``MAX_CURSOR_CHARS``, anything but a cursor exactly as the gateway
    writes one (``ListCursor.text``), or a cursor of another ``state``'s list."""
    if not values:
        return None
    text = values[0]
    if len(values) > 1 or not _CURSOR_TEXT.fullmatch(text):
        raise CursorRefused("malformed")
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CursorRefused("malformed") from None
    if not isinstance(data, dict) or set(data) != {"i", "s", "t"}:
        raise CursorRefused("malformed")
    at, approval_id, listed = data["t"], data["i"], data["s"]
    if not (
        isinstance(at, str)
        and _CURSOR_TIME.fullmatch(at)
        and isinstance(approval_id, str)
        and _ID.fullmatch(approval_id)
        and listed in STATES
    ):
        raise CursorRefused("malformed")
    try:
        parse_timestamp(at)  # a real instant (no February 30th)
    except TypeProblem:
        raise CursorRefused("malformed") from None
    cursor = ListCursor(listed, at, approval_id)
    if cursor.text() != text:  # one spelling only: no padding bits, spaces, escapes, duplicates
        raise CursorRefused("malformed")
    if listed != state:
        raise CursorRefused("params")  # another state's list: its position means nothing here
    return cursor
