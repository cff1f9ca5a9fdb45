"""A shadow policy's disagreement with the live one (``gateway.policy.shadow``), on decisions."""

from __future__ import annotations

from typing import Any

from builders import base, caller, compiled

from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision, decide
from gateway.policy.shadow import disagreement, shadow_principal
from gateway.policy.simulate import request_facts

LIVE = compiled(base())


def _candidate(change: str) -> CompiledPolicy:
    data = base()
    if change == "role":
        data["routes"][0]["allow"] = ["blocked"]
    elif change == "default":
        data["queries"]["add_thing"]["params"]["size"]["default"] = 2
    elif change == "route":
        data["routes"].append(
            {"path": "/gadgets/{id}", "method": "GET", "query": "get_thing", "allow": ["staff"],
             "tool": "get_gadget"}
        )  # fmt: skip
    return compiled(data)


def test_the_same_decision_is_no_disagreement() -> None:
    staff = caller(LIVE, groups=["staff"], tenant="t1")
    for request in ("GET /things/T-1", "GET /nothing", "POST /things"):
        facts = request_facts(request, {"id": "T-1"} if request.startswith("POST") else None)
        live = decide(LIVE, facts, staff)
        assert disagreement(live, live.reason, decide(LIVE, facts, staff), LIVE.sha256) is None


def test_allow_reason_rule_query_and_parameters_each_disagree() -> None:
    staff = caller(LIVE, groups=["staff"], tenant="t1")
    facts = request_facts("GET /things/T-1")
    live = decide(LIVE, facts, staff)
    shadow = _candidate("role")
    found = disagreement(live, live.reason, decide(shadow, facts, staff), shadow.sha256)
    assert found is not None
    assert (found.route, found.live, found.shadow) == ("/things/{id}", "allowed", "no-allow-role")
    assert found.record["allow"] is False and found.record["rule"] is None
    assert found.record["params"] is None  # the shadow bound nothing: no parameters listed

    post = request_facts("POST /things", {"id": "T-1"})
    live = decide(LIVE, post, staff)
    shadow = _candidate("default")
    found = disagreement(live, live.reason, decide(shadow, post, staff), shadow.sha256)
    assert found is not None and found.record["params"] == ["size"]
    assert (found.live, found.shadow) == ("allowed", "allowed")


def test_a_call_the_live_policy_did_not_route() -> None:
    staff = caller(LIVE, groups=["staff"], tenant="t1")
    facts = request_facts("GET /gadgets/G-1")
    shadow = _candidate("route")
    found = disagreement(None, "no-route", decide(shadow, facts, staff), shadow.sha256)
    assert found is not None and found.route == "/gadgets/{id}"
    assert found.record["query"] == "get_thing" and found.record["params"] is None


def _by_issuer() -> dict[str, Any]:
    data = base()
    data["roles"]["staff"] = [{"issuer": "okta", "groups": ["staff"]}]
    return data


def _issuers(change: str) -> CompiledPolicy:
    data = _by_issuer()
    if change == "rename":  # the same issuer (URL), another name: its roles follow it
        data["issuers"] = {"corp": data["issuers"]["okta"]}  # (not the base's other corp)
        for entries in data["roles"].values():
            for entry in entries:
                if entry.get("issuer") == "okta":
                    entry["issuer"] = "corp"
    elif change == "drop":
        data["issuers"] = {"other": {**data["issuers"]["okta"], "issuer": "https://other.example/"}}
        data["roles"]["staff"] = [{"groups": ["staff"]}]
    elif change == "audience":
        data["issuers"]["okta"]["audience"] = "another-api"
    return compiled(data)


def test_the_candidate_reads_the_token_through_its_own_issuers() -> None:
    by_issuer = compiled(_by_issuer())
    staff = caller(by_issuer, groups=["staff"], tenant="t1", aud="api")
    facts = request_facts("GET /things/T-1")
    live = decide(by_issuer, facts, staff)
    assert live.allow and live.rule == "staff"
    renamed = _issuers("rename")
    seen = shadow_principal(staff, by_issuer.model, renamed.model)
    assert isinstance(seen, Principal) and seen.issuer == "corp"
    assert disagreement(live, live.reason, decide(renamed, facts, seen), renamed.sha256) is None
    assert shadow_principal(staff, LIVE.model, _issuers("drop").model) == "issuer-unknown"
    assert shadow_principal(staff, LIVE.model, _issuers("audience").model) == "audience-mismatch"
    refused = Decision(allow=False, reason="issuer-unknown")
    found = disagreement(live, live.reason, refused, LIVE.sha256)
    assert found is not None and (found.live, found.shadow) == ("allowed", "issuer-unknown")
