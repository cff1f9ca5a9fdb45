"""The bounds of an audit event, as pure functions: strings cut at character boundaries, the
largest caller values dropped first, a last resort that still writes the event, and the chain's
line for what comes out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.bounds import SHRUNK_STRING_BYTES, Bounds, cut, digest, fit, pointer
from gateway.audit.chain import Chain
from gateway.audit.event import CallRecord, build_event, fallback_event
from gateway.audit.schema import AuditEvent
from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.load import load_policy

REPO = Path(__file__).resolve().parents[2]


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_a_cut_is_the_longest_start_of_whole_characters(text: str, limit: int) -> None:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return
    kept = cut(text, limit)
    assert text.startswith(kept)
    assert len(kept.encode("utf-8", "surrogatepass")) <= limit
    longer = text[: len(kept) + 1]
    assert len(longer.encode("utf-8", "surrogatepass")) > limit


def test_a_lone_surrogate_is_cut_like_any_character() -> None:
    assert cut("ab\ud800cd", 4) == "ab"  # the surrogate's three bytes do not fit
    assert cut("ab\ud800cd", 5) == "ab\ud800"


def test_pointers_escape_as_rfc_6901_says() -> None:
    assert pointer("a", "b/c", "m~n", 0) == "/a/b~1c/m~0n/0"


def test_strings_at_any_depth_are_cut_and_listed() -> None:
    bounds = Bounds(8)
    held: dict[str, Any] = {}
    bounds.put(held, "v", "/v", {"k": ["short", "x" * 20]})
    assert held == {"v": {"k": ["short", "x" * 8]}}
    assert bounds.truncated == [{"field": "/v/k/1", **digest("x" * 20)}]
    assert digest("x" * 20) == {"bytes": 20, "sha256": hashlib.sha256(b"x" * 20).hexdigest()}


def test_the_largest_value_is_dropped_first_with_its_cut_strings() -> None:
    bounds = Bounds(8)
    event: dict[str, Any] = {"a": {}, "b": {}}
    bounds.put(event["a"], "v", "/a/v", "small")
    bounds.put(event["b"], "v", "/b/v", ["y" * 20] * 30)
    assert len(bounds.truncated) == 30
    assert bounds.drop_largest()
    assert event == {"a": {"v": "small"}, "b": {"v": None}}
    assert bounds.truncated == [{"field": "/b/v", **digest(["y" * 20] * 30)}]
    assert bounds.drop_largest() and not bounds.drop_largest()


def test_an_event_that_cannot_fit_is_still_built_with_everything_shrunk() -> None:
    def build(bounds: Bounds) -> dict[str, Any]:
        event: dict[str, Any] = {"fixed": "z" * 3000, "text": bounds.text("/text", "t" * 1000)}
        bounds.put(event, "value", "/value", "v" * 1000)
        event["truncated"] = bounds.truncated
        return event

    event = fit(build, 1024)  # "fixed" alone is over: a last resort, and the event is kept
    assert event["text"] == "t" * SHRUNK_STRING_BYTES and event["value"] is None
    assert [t["field"] for t in event["truncated"]] == ["/text", "/value"]


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return compile_policy(
        load_policy(REPO / "policy.example.yaml", env={"OKTA_ISSUER": "http://127.0.0.1:1/x"})
    )


def _call(policy: CompiledPolicy, principal: Principal, path: str, **query: str) -> CallRecord:
    facts = RequestFacts(method="GET", path=path, query=list(query.items()))
    call = CallRecord(
        request_id="r1", method="GET", path=path, started=0.0, client=None, user_agent="ua"
    )
    call.principal, call.decision = principal, decide(policy, facts, principal)
    call.status = 200 if call.decision.allow else 403
    return call


def _sealed(event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    sealed, line = Chain(None).seal(event)
    AuditEvent.model_validate(sealed)
    return sealed, line


def test_a_verified_tokens_large_claims_are_bounded_too(policy: CompiledPolicy) -> None:
    actor = {"sub": "agent-" + "a" * 2000, "note": "n" * 2000}
    principal = Principal(
        issuer="okta",
        iss="http://127.0.0.1:1/x",
        subject="s" * 5000,
        client_id="c" * 600,
        groups=frozenset({"support"}),
        claims={"tenant": "t1", "act": {**actor, "act": actor}},
    )
    call = _call(policy, principal, "/v1/orders/O-1", tenant="t2")
    event = build_event(call, policy, key=None)
    sealed, line = _sealed(event)
    auth = sealed["protoPayload"]["authenticationInfo"]
    assert auth["principalSubject"] == "s" * 512
    assert auth["thirdPartyPrincipal"]["clientId"] == "c" * 512
    actors = auth["serviceAccountDelegationInfo"]
    assert [a["principalSubject"] for a in actors] == [("agent-" + "a" * 2000)[:512]] * 2
    assert actors[0]["thirdPartyPrincipal"]["thirdPartyClaims"] == {"note": "n" * 512}
    fields = [t["field"] for t in sealed["protoPayload"]["metadata"]["truncated"]]
    assert fields == [
        "/protoPayload/authenticationInfo/principalSubject",
        "/protoPayload/authenticationInfo/thirdPartyPrincipal/clientId",
        "/protoPayload/authenticationInfo/serviceAccountDelegationInfo/0/principalSubject",
        "/protoPayload/authenticationInfo/serviceAccountDelegationInfo/0/thirdPartyPrincipal"
        "/thirdPartyClaims/note",
        "/protoPayload/authenticationInfo/serviceAccountDelegationInfo/1/principalSubject",
        "/protoPayload/authenticationInfo/serviceAccountDelegationInfo/1/thirdPartyPrincipal"
        "/thirdPartyClaims/note",
    ]
    assert sealed["protoPayload"]["request"]["ignoredCallerValues"] == {"tenant": "t2"}
    assert len(line) <= 16384


def test_redacted_values_stay_hashes_when_values_are_dropped(policy: CompiledPolicy) -> None:
    principal = Principal(
        issuer="okta",
        iss="http://127.0.0.1:1/x",
        subject="order-writer",
        scopes=frozenset({"orders.write"}),
        claims={"tenant": "t1"},
    )
    body = {"order_id": "O-1", "customer_id": "C-1", "total_cents": 5, "tenant": ["t"] * 3000}
    decision = decide(policy, RequestFacts(method="POST", path="/v1/orders", body=body), principal)
    assert decision.allow
    call = CallRecord(
        request_id="r1", method="POST", path="/v1/orders", started=0.0, client=None, user_agent=None
    )
    call.principal, call.decision, call.status = principal, decision, 200
    sealed, line = _sealed(build_event(call, policy, key=b"k" * 32, max_bytes=4096))
    statement = sealed["protoPayload"]["request"]
    assert statement["ignoredCallerValues"] == {"tenant": None}  # the largest, dropped
    assert statement["params"]["total_cents"]["value"].startswith("redacted:hmac-sha256:")
    assert statement["params"]["order_id"]["value"] == "O-1"  # the rest fits: kept
    assert len(line) <= 4096


def test_the_fallback_event_is_bounded(policy: CompiledPolicy) -> None:
    call = CallRecord(
        request_id="r1",
        method="GET",
        path="/" + "p" * 9000,
        started=0.0,
        client=None,
        user_agent="\u2028" * 9000,
    )
    event = fallback_event(call, status=500, code="internal", policy=policy, key=None)
    sealed, line = _sealed(event)
    assert sealed["httpRequest"]["userAgent"] == "\u2028" * 170  # 510 of its 27000 bytes
    assert [t["field"] for t in sealed["protoPayload"]["metadata"]["truncated"]] == [
        "/httpRequest/requestUrl",
        "/httpRequest/userAgent",
    ]
    assert len(line.decode().splitlines()) == 1 and json.loads(line) == sealed
