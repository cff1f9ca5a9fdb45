"""Approvals, the policy's side: ``approval:`` on a route (approvers, ttl bounds), the loader's
refusals (located), who may decide (approver roles, deny roles, delegated tokens, the parties of
a request), explain, and ``policy test``'s ``approval`` and ``may_approve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from builders import EXAMPLE, base, caller, compiled

from gateway.errors import PolicyError
from gateway.policy.approval import decider_verdict, parties
from gateway.policy.compiled import compile_policy
from gateway.policy.explain import explain, explanation_record, render_explanation
from gateway.policy.load import load_policy
from gateway.policy.simulate import principal_for, request_facts
from gateway.policy.testing import run_case_files

POLICY = compile_policy(load_policy(EXAMPLE, env={}))


def _with_approval(approval: dict[str, Any], route: int = 1) -> dict[str, Any]:
    data = base()
    data["roles"]["leads"] = [{"groups": ["leads"]}]
    data["routes"][route]["approval"] = approval
    return data


def _problems(data: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as caught:
        compiled(data)
    return "\n".join(str(p) for p in caught.value.problems)


def test_a_route_declares_its_approvers_and_ttl() -> None:
    policy = compiled(_with_approval({"approvers": ["leads"], "ttl": "30m"}))
    approval = policy.routes[1].model.approval
    assert approval is not None
    assert approval.approvers == ["leads"] and approval.ttl_seconds == 1800
    default = compiled(_with_approval({"approvers": ["leads"]})).routes[1].model.approval
    assert default is not None and default.ttl == "15m"


@pytest.mark.parametrize(
    ("approval", "message"),
    [
        ({"approvers": ["leeds"]}, "approvers[0]: unknown role 'leeds'"),
        ({"approvers": []}, "approval.approvers: must not be empty"),
        ({"approvers": ["leads", "leads"]}, "a role is listed twice"),
        ({"approvers": ["leads"], "ttl": "25h"}, "ttl must be from 1s to 24h"),
        ({"approvers": ["leads"], "ttl": "500ms"}, "ttl must be from 1s to 24h"),
        ({"approvers": ["leads"], "ttl": "soon"}, "ttl"),
        ({"approvers": ["leads"], "tll": "1m"}, "tll"),
        ({"approvers": ["leads"], "match": ["tenant", "tenant"]}, "a parameter is listed twice"),
        (
            {"approvers": ["leads"], "match": ["tenat"]},
            "routes[1].approval.match[0]: query add_thing has no parameter tenat",
        ),
        (
            {"approvers": ["leads"], "match": ["size"]},
            "routes[1].approval.match[0]: parameter size of query add_thing is not bound from a "
            "claim",
        ),
    ],
)
def test_the_loader_refuses_a_bad_approval(approval: dict[str, Any], message: str) -> None:
    problems = _problems(_with_approval(approval))
    assert message in problems, problems


def test_match_defaults_to_every_claim_bound_parameter() -> None:
    from gateway.policy.approval import match_names

    policy = compiled(_with_approval({"approvers": ["leads"]}))
    route = policy.routes[1]
    assert route.model.approval is not None
    assert match_names(route.model.approval, route.query.model.params) == ("tenant",)
    chosen = compiled(_with_approval({"approvers": ["leads"], "match": []})).routes[1]
    assert chosen.model.approval is not None
    assert match_names(chosen.model.approval, chosen.query.model.params) == ()


@pytest.mark.parametrize("claim", ["sub", "act.sub"])
def test_a_parameter_bound_from_the_requester_s_own_sub_cannot_be_matched(claim: str) -> None:
    data = _with_approval({"approvers": ["leads"]})
    data["queries"]["add_thing"]["params"]["owner"] = {"type": "STRING", "from": f"claim.{claim}"}
    data["queries"]["add_thing"]["sql"] = (
        "INSERT INTO Things (Tenant, Id, Size, Owner) VALUES (@tenant, @id, @size, @owner)"
    )
    problems = _problems(data)  # by default: every claim-bound parameter, owner too
    assert (
        f"routes[1].approval: parameter owner of query add_thing is bound from claim.{claim}, "
        "which no approver shares with the requester: nobody could decide. Set approval.match"
    ) in problems, problems
    data["routes"][1]["approval"]["match"] = ["tenant", "owner"]
    assert "routes[1].approval.match: parameter owner" in _problems(data)
    data["routes"][1]["approval"]["match"] = ["tenant"]  # the tenant's leads decide
    assert compiled(data).routes[1].model.approval is not None


def test_a_postgresql_dialect_policy_asks_for_approvals_as_a_googlesql_one() -> None:
    from gateway.policy.approval import match_names

    pg = compile_policy(load_policy(EXAMPLE.with_name("policy.example.postgresql.yaml"), env={}))
    route = next(r for r in pg.routes if r.query_name == "cancel_order")
    gsql = next(r for r in POLICY.routes if r.query_name == "cancel_order")
    assert route.model.approval is not None and route.model.approval == gsql.model.approval
    assert (route.model.method, route.template) == (gsql.model.method, gsql.template)
    assert match_names(route.model.approval, route.query.model.params) == ("tenant",)
    # the loader's checks are the dialect's too: a match on the requester's own sub is refused
    data = pg.model.model_dump(by_alias=True, exclude_none=True)
    cancel = data["queries"]["cancel_order"]
    cancel["params"]["owner"] = {"type": "varchar", "from": "claim.sub"}
    cancel["sql"] = cancel["sql"].replace("status IN", "customer_id <> $3 AND status IN")
    problems = _problems(data)
    assert "approval: parameter owner of query cancel_order is bound from claim.sub" in problems


def test_approval_is_refused_on_a_paginated_query_s_route() -> None:
    data = load_policy(EXAMPLE, env={}).policy.model_dump(by_alias=True, exclude_none=True)
    listing = next(r for r in data["routes"] if r["query"] == "list_orders")
    listing["approval"] = {"approvers": ["support-leads"]}
    problems = _problems(data)
    assert "pages by keyset" in problems and "approval" in problems


def test_an_approver_holds_an_approver_role_and_no_deny_role() -> None:
    route = next(r for r in POLICY.routes if r.query_name == "cancel_order")
    approval = route.model.approval
    assert approval is not None

    def verdict(**claims: Any) -> str:
        principal = principal_for(POLICY.model, {"iss": "okta", "sub": "x", **claims})
        found = decider_verdict(POLICY.roles, route.model, approval, principal)
        return "ok" if found.problem is None else found.problem.code

    assert verdict(groups=["support", "support-leads"], tenant="t1") == "ok"
    assert verdict(groups=["support-leads"]) == "ok"  # may decide without asking itself
    assert verdict(groups=["support"]) == "not-approver"
    assert verdict(groups=["support-leads", "suspended"]) == "denied-by-role"
    # an agent acting for a lead holds support-leads through no entry that admits delegation
    assert verdict(groups=["support-leads"], act={"sub": "order-agent"}) == "not-approver"


def test_the_parties_of_a_call_are_its_subject_and_its_actors() -> None:
    direct = caller(POLICY, groups=["support"])
    assert parties(direct) == {(direct.iss, "user-1")}
    agent = caller(POLICY, act={"sub": "order-agent", "act": {"sub": "planner"}})
    assert parties(agent) == {
        (agent.iss, "user-1"),
        (agent.iss, "order-agent"),
        (agent.iss, "planner"),
    }


def test_explain_shows_the_approval_and_its_approvers() -> None:
    principal = caller(POLICY, groups=["support"], tenant="t1")
    ex = explain(POLICY, request_facts("POST /v1/orders/O-1/cancel", None, None), principal)
    record = explanation_record(ex, POLICY)
    assert record["approval"] == {
        "approvers": ["support-leads"], "ttl": "15m", "match": ["tenant"], "required": True
    }  # fmt: skip
    text = render_explanation(POLICY, ex)
    assert "approval  required: approvers support-leads (never the requester); ttl 15m" in text
    assert "an approver decides only requests whose tenant its own token binds alike" in text
    assert "202 approval-required" in text
    plain = explain(POLICY, request_facts("GET /v1/orders/O-1", None, None), principal)
    assert explanation_record(plain, POLICY)["approval"] is None
    assert "approval" not in render_explanation(POLICY, plain)


def _case_file(tmp_path: Path, expect: str, claims: str) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(
        f"policy: {EXAMPLE}\n"
        "cases:\n"
        "  - name: a case\n"
        f"    claims: {claims}\n"
        "    request: POST /v1/orders/O-1/cancel\n"
        f"    expect: {expect}\n"
    )
    return path


@pytest.mark.parametrize(
    ("expect", "claims", "passes"),
    [
        ("{allow: true, approval: required}", "{iss: okta, groups: [support], tenant: t1}", True),
        ("{allow: true, approval: none}", "{iss: okta, groups: [support], tenant: t1}", False),
        ("{allow: true, may_approve: false}", "{iss: okta, groups: [support], tenant: t1}", True),
        ("{allow: true, may_approve: true}", "{iss: okta, groups: [support], tenant: t1}", False),
        ("{allow: true, may_approve: true}",
         "{iss: okta, groups: [support, support-leads], tenant: t1}", True),
        ("{allow: false, may_approve: false}",  # a lead whose token binds no tenant decides
         "{iss: okta, groups: [support, support-leads]}", True),  # nothing (match: tenant)
        ("{allow: false, may_approve: true}",
         "{iss: okta, groups: [support, support-leads]}", False),
        ("{allow: false, approval: none}", "{iss: okta, groups: [marketing], tenant: t1}", True),
        ("{allow: false, approval: required}", "{iss: okta, groups: [x], tenant: t1}", False),
    ],
)  # fmt: skip
def test_policy_test_expects_approval_and_may_approve(
    tmp_path: Path, expect: str, claims: str, passes: bool
) -> None:
    [suite] = run_case_files([_case_file(tmp_path, expect, claims)], env={})
    [outcome] = suite.outcomes
    assert outcome.passed is passes, outcome.lines


def _warnings(data: dict[str, Any]) -> list[str]:
    from gateway.policy.validate import policy_warnings

    return [msg for _, msg in policy_warnings(compiled(data).model)]


def test_a_route_whose_query_binds_no_claim_says_any_approver_decides() -> None:
    data = _with_approval({"approvers": ["leads"]})
    data["queries"]["add_thing"]["params"]["tenant"] = {"type": "STRING"}  # from the caller
    [warning] = [w for w in _warnings(data) if "any approver decides any request" in w]
    assert "binds no parameter from a claim" in warning and "match: []" in warning
    data["routes"][1]["approval"]["match"] = []  # said so: no warning
    assert not [w for w in _warnings(data) if "any approver" in w]
    assert not [w for w in _warnings(_with_approval({"approvers": ["leads"]})) if "approv" in w]


@pytest.mark.parametrize("claim", ["groups", "dept"])
def test_a_matched_claim_that_roles_test_is_warned_of(claim: str) -> None:
    data = _with_approval({"approvers": ["leads"]})
    data["roles"]["finance"] = [{"claims": {"dept": "finance"}}]
    data["queries"]["add_thing"]["params"]["kind"] = {
        "type": "ARRAY<STRING>" if claim == "groups" else "STRING", "from": f"claim.{claim}"
    }  # fmt: skip
    data["queries"]["add_thing"]["sql"] = (
        "INSERT INTO Things (Tenant, Id, Size, Kind) VALUES (@tenant, @id, @size, @kind)"
    )
    [warning] = [w for w in _warnings(data) if "which roles test" in w]
    assert f"parameter kind is bound from claim.{claim}, which roles test" in warning
    data["routes"][1]["approval"]["match"] = ["tenant"]
    assert not [w for w in _warnings(data) if "which roles test" in w]
