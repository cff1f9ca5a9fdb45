"""A shadow policy's disagreement with the live one (``gateway.policy.shadow``), on decisions."""

from __future__ import annotations

from builders import base, caller, compiled

from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import decide
from gateway.policy.shadow import disagreement
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
    assert found.record["query"] == "get_thing" and found.record["params"] == ["id", "tenant"]
