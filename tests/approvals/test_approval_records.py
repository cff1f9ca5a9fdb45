"""The pure rules of an approval's life (``gateway.approvals.record``): ids, the request hash,
why a repeated call may not run (``replay_refusal``), why a principal may not decide
(``decision_refusal``: a party of the request, an expired or decided request), expiry and the
state a caller sees; and ``/approvals`` paths (``endpoints.parse_path``). No Spanner, no I/O:
``now`` is an argument."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.approvals.endpoints import ApprovalsPath, _limit, parse_path
from gateway.approvals.record import (
    MAX_CURSOR_CHARS,
    MAX_REASON_CHARS,
    ApprovalRecord,
    ListCursor,
    check_reason,
    decision_refusal,
    new_approval_id,
    parse_approval_id,
    parse_list_cursor,
    parse_states,
    replay_refusal,
    request_hash,
    shown_state,
)
from gateway.auth.principal import Principal
from gateway.errors import (
    APPROVAL_CODES,
    ApprovalRefused,
    BadRequest,
    CursorRefused,
    GatewayError,
)

REPO = Path(__file__).resolve().parents[2]
ISS = "https://idp.example/oauth2/default"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
TTL = dt.timedelta(minutes=15)
ROUTE, QUERY = "POST /v1/orders/{order_id}/cancel", "cancel_order"
VALUES = {"order_id": "O-1", "tenant": "t1"}
DIGEST = request_hash("POST", "/v1/orders/{order_id}/cancel", QUERY, VALUES)


def who(sub: str, *, iss: str = ISS, act: dict[str, Any] | None = None) -> Principal:
    claims: dict[str, Any] = {"sub": sub, "iss": iss}
    if act is not None:
        claims["act"] = act
    return Principal(issuer="okta", iss=iss, subject=sub, claims=claims)


ASKER = who("00u-support-1")
LEAD = who("00u-lead-1")


def record(state: str = "pending", **changes: Any) -> ApprovalRecord:
    base = ApprovalRecord(
        approval_id="a" * 32,
        state=state,  # type: ignore[arg-type]
        issuer="okta",
        iss=ISS,
        subject=ASKER.subject,
        actors=(),
        route=ROUTE,
        query=QUERY,
        request_hash=DIGEST,
        params=VALUES,
        approvers=("support-leads",),
        request_id="req-1",
        created_at=T0,
        expires_at=T0 + TTL,
        scope="5c" * 32,
    )
    return replace(base, **changes)


def replay(
    found: ApprovalRecord | None,
    principal: Principal = ASKER,
    *,
    now: dt.datetime = T0 + dt.timedelta(minutes=1),
    keyed: bool = False,
    **call: str,
) -> str:
    """The refusal's code of a repeated call (``ok``: it may run)."""
    refusal = replay_refusal(
        found,
        principal,
        route=call.get("route", ROUTE),
        query=call.get("query", QUERY),
        digest=call.get("digest", DIGEST),
        now=now,
        keyed=keyed,
    )
    return "ok" if refusal is None else refusal.code


def test_an_approval_made_before_scopes_existed_is_expired_whatever_its_state() -> None:
    """A row without Scope was written before approvals were matched to their approvers'
    tenant (an upgrade): who approved it was never checked, so it runs nothing."""
    for state in ("approved", "pending"):
        assert replay(record(state=state, scope=None)) == "approval-expired"
    assert replay(record(state="used", scope=None)) == "approval-used"  # as it says
    assert replay(record(state="approved", scope=None), keyed=False) == "approval-expired"


# -- ids and the request hash -------------------------------------------------------------------


def test_an_approval_id_is_32_lowercase_hex_digits() -> None:
    made = {new_approval_id() for _ in range(50)}
    assert len(made) == 50 and all(parse_approval_id(i) == i for i in made)
    assert parse_approval_id(b"0123456789abcdef0123456789abcdef") == "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "value",
    ["", "A" * 32, "a" * 31, "a" * 33, "g" * 32, " " + "a" * 31, "a" * 32 + "\n", None, 7,
     "../" + "a" * 29],
)  # fmt: skip
def test_anything_else_is_approval_id_invalid(value: object) -> None:
    with pytest.raises(ApprovalRefused) as caught:
        parse_approval_id(value)
    assert (caught.value.code, caught.value.status) == ("approval-id-invalid", 400)


def test_the_request_hash_covers_route_query_and_every_value() -> None:
    method, template = "POST", "/v1/orders/{order_id}/cancel"
    assert request_hash(method, template, QUERY, dict(reversed(VALUES.items()))) == DIGEST
    others = [
        request_hash("PUT", template, QUERY, VALUES),
        request_hash(method, "/v1/orders/{order_id}", QUERY, VALUES),
        request_hash(method, template, "get_order", VALUES),
        request_hash(method, template, QUERY, {**VALUES, "order_id": "O-2"}),
        request_hash(method, template, QUERY, {**VALUES, "tenant": "t2"}),  # claim-bound too
        request_hash(method, template, QUERY, {"order_id": "O-1"}),
        request_hash(method, template, QUERY, {**VALUES, "extra": None}),
        request_hash(method, template, QUERY, {**VALUES, "order_id": 1}),
        request_hash(method, template, QUERY, {**VALUES, "order_id": b"O-1"}),
    ]
    assert DIGEST not in others and len(set(others)) == len(others)


# -- a repeated call: replay_refusal ------------------------------------------------------------


def test_an_approved_request_runs_for_its_requester_with_its_values_in_time() -> None:
    assert replay(record("approved")) == "ok"


@pytest.mark.parametrize(
    ("found", "principal", "call"),
    [
        (None, ASKER, {}),  # no such approval
        (record("approved"), LEAD, {}),  # another principal
        (record("approved"), who(ASKER.subject, iss="https://other.example"), {}),  # same sub
        (record("approved"), ASKER, {"route": "POST /v1/orders/{order_id}/refund"}),
        (record("approved"), ASKER, {"query": "refund_order"}),
        (record("approved"), ASKER, {"digest": "0" * 64}),  # other values
        (record("used"), LEAD, {}),  # a mismatch tells nothing of the state
        (record("rejected", reason="no"), ASKER, {"digest": "0" * 64}),
    ],
)
def test_any_other_call_is_a_mismatch_that_tells_nothing(
    found: ApprovalRecord | None, principal: Principal, call: dict[str, str]
) -> None:
    refusal = replay_refusal(
        found,
        principal,
        route=call.get("route", ROUTE),
        query=call.get("query", QUERY),
        digest=call.get("digest", DIGEST),
        now=T0,
    )
    assert refusal is not None and refusal.code == "approval-mismatch" and refusal.status == 403
    assert "rejected" not in refusal.detail and "used" not in refusal.detail


def test_each_state_refuses_with_its_code() -> None:
    assert replay(record("pending")) == "approval-pending"
    assert replay(record("used")) == "approval-used"
    assert replay(record("rejected")) == "approval-rejected"
    rejected = replay_refusal(
        record("rejected", reason="not this one"),
        ASKER,
        route=ROUTE,
        query=QUERY,
        digest=DIGEST,
        now=T0,
    )
    assert rejected is not None and rejected.detail.endswith(": not this one")
    assert {c: APPROVAL_CODES[c] for c in ("approval-pending", "approval-used")} == {
        "approval-pending": 409,
        "approval-used": 409,
    }


def test_a_used_approval_goes_on_to_a_keyed_write_whose_key_may_hold_its_answer() -> None:
    assert replay(record("used"), keyed=True) == "ok"
    assert replay(record("used"), LEAD, keyed=True) == "approval-mismatch"  # never another's
    assert replay(record("pending"), keyed=True) == "approval-pending"


def test_approvals_and_pending_requests_expire_at_their_time() -> None:
    end = T0 + TTL
    assert replay(record("approved"), now=end - dt.timedelta(microseconds=1)) == "ok"
    assert replay(record("approved"), now=end) == "approval-expired"  # expires_at is exclusive
    assert replay(record("pending"), now=end) == "approval-expired"
    # what ran, or was rejected, says so whatever the time
    assert replay(record("used"), now=end + TTL) == "approval-used"
    assert replay(record("rejected"), now=end + TTL) == "approval-rejected"


def test_the_state_a_caller_sees() -> None:
    end = T0 + TTL
    for state in ("pending", "approved"):
        assert shown_state(record(state), end - dt.timedelta(seconds=1)) == state
        assert shown_state(record(state), end) == "expired"
        assert record(state).expired(end) and not record(state).expired(T0)
    for state in ("rejected", "used"):
        assert shown_state(record(state), end + TTL) == state
        assert not record(state).expired(end + TTL)


def test_the_view_of_a_request() -> None:
    decided = record(
        "approved",
        actors=("order-agent",),
        decided_at=T0 + dt.timedelta(minutes=2),
        decider_iss=ISS,
        decider_subject=LEAD.subject,
        reason="ticket 42",
    )
    view = decided.view(T0 + dt.timedelta(minutes=3))
    assert view == {
        "id": "a" * 32,
        "state": "approved",
        "route": ROUTE,
        "query": QUERY,
        "params": VALUES,
        "approvers": ["support-leads"],
        "requester": {"iss": ISS, "sub": ASKER.subject, "actors": ["order-agent"]},
        "created_at": "2026-01-02T03:04:05.000000Z",
        "expires_at": "2026-01-02T03:19:05.000000Z",
        "decided_at": "2026-01-02T03:06:05.000000Z",
        "decided_by": {"iss": ISS, "sub": LEAD.subject, "actors": []},
        "reason": "ticket 42",
        "used_at": None,
    }
    assert record().view(T0 + TTL)["state"] == "expired"


# -- who may decide: decision_refusal -----------------------------------------------------------


def decision(found: ApprovalRecord, principal: Principal, now: dt.datetime = T0) -> str:
    refusal = decision_refusal(found, principal, now)
    return "ok" if refusal is None else refusal.code


def test_another_principal_decides_a_pending_request_in_time() -> None:
    assert decision(record(), LEAD) == "ok"
    # the same subject under another issuer is another principal
    assert decision(record(), who(ASKER.subject, iss="https://other.example")) == "ok"


def test_nobody_decides_a_request_they_took_part_in() -> None:
    assert decision(record(), ASKER) == "approval-own-request"
    # the requester, acting through an agent (the agent's token: sub = requester, act = agent)
    assert decision(record(), who(ASKER.subject, act={"sub": "order-agent"})) == (
        "approval-own-request"
    )
    # the agent that asked for the requester decides nothing of it either, directly or for a lead
    asked_by_agent = record(actors=("order-agent",))
    assert decision(asked_by_agent, who("order-agent")) == "approval-own-request"
    assert decision(asked_by_agent, who(LEAD.subject, act={"sub": "order-agent"})) == (
        "approval-own-request"
    )
    # a requester named as an actor deeper in the approver's chain is a party too
    chain = {"sub": "planner", "act": {"sub": ASKER.subject}}
    assert decision(record(), who(LEAD.subject, act=chain)) == "approval-own-request"
    assert decision(asked_by_agent, LEAD) == "ok"


def test_a_request_is_decided_once_and_only_in_time() -> None:
    end = T0 + TTL
    assert decision(record(), LEAD, end - dt.timedelta(microseconds=1)) == "ok"
    assert decision(record(), LEAD, end) == "approval-expired"
    for state in ("approved", "rejected", "used"):
        assert decision(record(state), LEAD) == "approval-decided"
    assert decision(record("approved"), LEAD, end) == "approval-expired"
    # a party is told so first, whatever the state
    assert decision(record("used"), ASKER) == "approval-own-request"


def test_every_code_has_its_status() -> None:
    for code, status in APPROVAL_CODES.items():
        refusal = ApprovalRefused("x", code=code)
        assert (refusal.code, refusal.status) == (code, status)
    assert ApprovalRefused("x", code="approval-table-missing").headers == {"Retry-After": "5"}
    with pytest.raises(KeyError):
        ApprovalRefused("x", code="approval-unknown")


# -- the approvers' inputs ----------------------------------------------------------------------


def test_a_reason_is_an_optional_bounded_string() -> None:
    assert check_reason(None) is None
    assert check_reason("ok") == "ok"
    assert check_reason("x" * MAX_REASON_CHARS) == "x" * MAX_REASON_CHARS
    for bad in ("x" * (MAX_REASON_CHARS + 1), 42, ["a"], {"a": 1}):
        with pytest.raises(BadRequest) as caught:
            check_reason(bad)
        assert caught.value.code == "body-invalid"


def test_the_list_s_state_is_one_of_four_once() -> None:
    assert parse_states([]) == "pending"
    for state in ("pending", "approved", "rejected", "used"):
        assert parse_states([state]) == state
    for bad in (["expired"], ["PENDING"], ["pending", "used"], [""]):
        with pytest.raises(BadRequest) as caught:
            parse_states(bad)
        assert caught.value.code == "query-invalid"


# -- /approvals paths ---------------------------------------------------------------------------

ID = "0123456789abcdef" * 2


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/approvals", ApprovalsPath("list", None, "GET /approvals")),
        ("HEAD", "/approvals", ApprovalsPath("list", None, "HEAD /approvals")),
        ("GET", f"/approvals/{ID}", ApprovalsPath("view", ID, "GET /approvals/{id}")),
        ("HEAD", f"/approvals/{ID}", ApprovalsPath("view", ID, "HEAD /approvals/{id}")),
        ("POST", f"/approvals/{ID}/approve",
         ApprovalsPath("approve", ID, "POST /approvals/{id}/approve")),
        ("POST", f"/approvals/{ID}/reject",
         ApprovalsPath("reject", ID, "POST /approvals/{id}/reject")),
        # the id is parsed later (after the token): a bad one is still a view of "nope"
        ("GET", "/approvals/nope", ApprovalsPath("view", "nope", "GET /approvals/{id}")),
        ("GET", "/approvals/", ApprovalsPath("view", "", "GET /approvals/{id}")),
    ],
)  # fmt: skip
def test_the_four_paths(method: str, path: str, expected: ApprovalsPath) -> None:
    assert parse_path(path, method) == expected


@pytest.mark.parametrize(
    "path",
    [
        f"/approvals/{ID}/",
        f"/approvals/{ID}/approve/",
        f"/approvals/{ID}/accept",
        f"/approvals/{ID}/Approve",
        f"/approvals/{ID}/approve/again",
        "/approvals/a/b/c",
    ],
)
def test_anything_else_below_approvals_is_404(path: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_path(path, "POST")
    assert (caught.value.status, caught.value.code) == (404, "no-route")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/approvals", "GET"),
        ("DELETE", f"/approvals/{ID}", "GET"),
        ("PUT", f"/approvals/{ID}", "GET"),
        ("GET", f"/approvals/{ID}/approve", "POST"),
        ("HEAD", f"/approvals/{ID}/reject", "POST"),
    ],
)
def test_a_method_the_path_does_not_take_is_405(method: str, path: str, allow: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_path(path, method)
    assert caught.value.status == 405
    assert caught.value.headers["Allow"] == allow


@pytest.mark.parametrize(
    "given", [["0"], ["101"], ["\u00b2"], ["\uff11\uff10"], ["1e2"], [" 5"], ["5", "6"], [""]]
)
def test_a_list_limit_is_one_to_a_hundred_in_ascii_digits_or_refused(given: list[str]) -> None:
    with pytest.raises(BadRequest, match="limit is an integer from 1 to 100"):
        _limit(given)


def test_a_list_limit_defaults_and_reads_ascii_digits() -> None:
    assert _limit([]) == 50
    assert _limit(["7"]) == 7 and _limit(["100"]) == 100


def test_the_request_digest_is_keyed_when_the_gateway_has_a_key() -> None:
    """The table holds the digest beside the shown values (redacted ones hashed): unkeyed, a
    low-entropy redacted value could be found by trying candidates against it."""
    template = "/v1/orders/{order_id}/cancel"
    keyed = request_hash("POST", template, QUERY, VALUES, b"k" * 32)
    assert keyed != DIGEST and len(keyed) == len(DIGEST)
    assert keyed == request_hash("POST", template, QUERY, dict(VALUES), b"k" * 32)
    assert keyed != request_hash("POST", template, QUERY, VALUES, b"j" * 32)


def test_an_approval_is_used_by_its_requester_through_the_same_delegation_chain() -> None:
    """Asked by agent A for the subject: agent B for the same subject, or the subject directly,
    may not use it (the chain the approver saw is part of what was approved)."""
    by_agent = record("approved", actors=("agent-a",))
    assert replay(by_agent, who(ASKER.subject, act={"sub": "agent-a"})) == "ok"
    assert replay(by_agent, who(ASKER.subject, act={"sub": "agent-b"})) == "approval-mismatch"
    assert replay(by_agent, ASKER) == "approval-mismatch"
    assert replay(record("approved"), who(ASKER.subject, act={"sub": "agent-a"})) == (
        "approval-mismatch"
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


ID = "0123456789abcdef0123456789abcdef"


def test_a_list_cursor_carries_the_last_row_to_the_nanosecond_and_reads_back() -> None:
    """The last row's CreatedAt as Spanner returns it (``DatetimeWithNanoseconds``): every
    nanosecond kept, so rows a microsecond apart are never mistaken for one another."""
    from google.api_core.datetime_helpers import DatetimeWithNanoseconds

    at = DatetimeWithNanoseconds(2026, 1, 2, 3, 4, 5, nanosecond=123456789, tzinfo=dt.UTC)  # type: ignore[no-untyped-call]
    row = record(created_at=at, approval_id=ID)
    cursor = ListCursor.after(row)
    assert cursor == ListCursor("pending", "2026-01-02T03:04:05.123456789Z", ID)
    text = cursor.text()
    assert len(text) <= MAX_CURSOR_CHARS and re.fullmatch(r"[A-Za-z0-9_-]+", text)
    assert json.loads(base64.urlsafe_b64decode(text + "==")) == {
        "i": ID, "s": "pending", "t": "2026-01-02T03:04:05.123456789Z"
    }  # fmt: skip
    read = parse_list_cursor([text], "pending")
    assert read == cursor
    assert read is not None and (read.timestamp.nanos, read.timestamp.value) == (
        123456789,
        dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
    )
    # a plain datetime (microseconds), and a whole second: no fraction, no trailing zeros
    assert ListCursor.after(replace(row, created_at=T0)).created_at == "2026-01-02T03:04:05Z"
    micro = replace(row, created_at=T0.replace(microsecond=120000))
    assert ListCursor.after(micro).created_at == "2026-01-02T03:04:05.12Z"
    assert parse_list_cursor([], "pending") is None  # the first page


def _cursor(**members: Any) -> str:
    data = {"i": ID, "s": "pending", "t": "2026-01-02T03:04:05.5Z", **members}
    return _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())


GOOD = _cursor()


@pytest.mark.parametrize(
    "given",
    [
        [""],
        [GOOD, GOOD],  # twice
        [GOOD + "="],  # padding
        [GOOD[:-1]],  # cut short
        [GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")],  # changed
        [GOOD.replace("-", "+").replace("_", "/") + "+/"],  # not base64url
        ["A" * (MAX_CURSOR_CHARS + 1)],
        [_b64(b"not json")],
        [_b64(b"[1, 2]")],
        [_b64(b"\xff\xfe")],
        [_cursor(x=1)],  # a member more
        [_b64(b'{"i":"%s","s":"pending"}' % ID.encode())],  # one fewer
        [_cursor(i=ID.upper())],
        [_cursor(i=ID[:-1])],
        [_cursor(i=1)],
        [_cursor(s="expired")],
        [_cursor(s=None)],
        [_cursor(t="2026-01-02T03:04:05.50Z")],  # trailing zero: not how the gateway writes it
        [_cursor(t="2026-01-02T03:04:05.1234567891Z")],  # past nanoseconds
        [_cursor(t="2026-01-02T03:04:05+00:00")],
        [_cursor(t="2026-02-30T03:04:05Z")],
        [_cursor(t="2026-01-02 03:04:05Z")],
        [_cursor(t=1767323045)],
        # the right members, spelt otherwise: spaces, order, an escape, a key twice
        [_b64(json.dumps({"i": ID, "s": "pending", "t": "2026-01-02T03:04:05.5Z"}).encode())],
        [_b64(b'{"t":"2026-01-02T03:04:05.5Z","s":"pending","i":"%s"}' % ID.encode())],
        [_b64(b'{"i":"%s","s":"pend\\u0069ng","t":"2026-01-02T03:04:05.5Z"}' % ID.encode())],
        [_b64(b'{"i":"x","i":"%s","s":"pending","t":"2026-01-02T03:04:05.5Z"}' % ID.encode())],
    ],
)
def test_a_list_cursor_is_read_strictly(given: list[str]) -> None:
    with pytest.raises(CursorRefused) as refused:
        parse_list_cursor(given, "pending")
    assert refused.value.code == "cursor-invalid" and refused.value.status == 400
    assert refused.value.reason == "malformed"
    assert not given[0] or given[0] not in refused.value.detail  # never quoted back


def test_a_cursor_of_another_state_s_list_is_refused() -> None:
    assert parse_list_cursor([GOOD], "pending") == ListCursor(
        "pending", "2026-01-02T03:04:05.5Z", ID
    )
    for state in ("approved", "rejected", "used"):
        with pytest.raises(CursorRefused) as refused:
            parse_list_cursor([GOOD], state)
        assert refused.value.code == "cursor-invalid"
    assert parse_list_cursor([_cursor(s="used")], "used") is not None
