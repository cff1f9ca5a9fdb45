"""A shadow policy's disagreement with the live one (``gateway.policy.shadow``), on decisions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from builders import base, caller, compiled

from gateway.auth.principal import Principal
from gateway.policy import shadow as shadow_module
from gateway.policy.compiled import CompiledPolicy
from gateway.policy.decide import Decision, decide
from gateway.policy.shadow import ShadowIssuers, disagreement, shadow_principal
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


def _claims(change: str) -> CompiledPolicy:
    data = _by_issuer()
    if change == "groups":  # the candidate reads groups from another claim
        data["issuers"]["okta"]["claims"] = {"groups": "roles"}
    elif change == "preset":
        data["issuers"]["okta"]["preset"] = "oidc"
    return compiled(data)


def test_the_mapping_worked_out_once_per_swap_reads_as_shadow_principal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ShadowIssuers`` (what a gateway uses) answers as ``shadow_principal`` for each kind of
    change, without comparing claim names on a call (a pydantic copy each, tens of us)."""
    by_issuer = compiled(_by_issuer())
    overridden = _claims("groups")
    staff = caller(by_issuer, groups=["staff"], roles=["staff-too"], tenant="t1", aud="api")
    opaque = dataclasses.replace(staff, introspected=True)
    pairs = [
        (by_issuer, candidate)
        for candidate in (
            by_issuer,
            _issuers("rename"),
            _issuers("drop"),
            _issuers("audience"),
            overridden,
            _claims("preset"),
        )
    ] + [(overridden, by_issuer), (overridden, overridden)]
    cases = []
    for live, candidate in pairs:
        mapping = ShadowIssuers(live.model, candidate.model)
        for principal in (staff, opaque, dataclasses.replace(staff, issuer="corp")):
            cases.append(
                (mapping, principal, shadow_principal(principal, live.model, candidate.model))
            )
    answers = {repr(expected) for _, _, expected in cases}
    assert {"'issuer-unknown'", "'audience-mismatch'"} <= answers  # the cases differ
    regrouped = ShadowIssuers(by_issuer.model, overridden.model).principal(staff)
    assert isinstance(regrouped, Principal) and regrouped.groups == {"staff-too"}

    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("claim names compared on a call")

    monkeypatch.setattr(shadow_module, "claim_names", never)
    monkeypatch.setattr(shadow_module, "effective_names", never)
    for mapping, principal, expected in cases:
        if principal.issuer == "corp":  # not the live policy's issuer of its URL: worked out
            continue
        assert mapping.principal(principal) == expected
