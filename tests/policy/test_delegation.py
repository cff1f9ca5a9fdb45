"""Delegated tokens (RFC 8693 ``act``) and roles: an entry holds for a delegated token only when it
says ``delegated: true`` or names the actor (a claims test under ``act``); a deny role judges a
delegated token all the same; claim paths under ``act`` read the nested object only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from builders import EXAMPLE, REPO, base, caller, compiled

from gateway.auth.principal import Principal
from gateway.errors import PolicyError
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import decide
from gateway.policy.diff import diff_policies
from gateway.policy.explain import explain, explanation_record, render_explanation
from gateway.policy.load import load_policy, load_policy_data
from gateway.policy.model import Role
from gateway.policy.roles import RoleTable
from gateway.policy.simulate import SimulationError, principal_for, request_facts

AGENT = {"sub": "order-agent"}


def table(**roles: Any) -> RoleTable:
    return RoleTable(
        {name: Role.model_validate({"any_of": entries}) for name, entries in roles.items()}
    )


def who(**claims: Any) -> Principal:
    return caller(compiled(base()), **claims)


ROLES = table(
    default=[{"groups": ["support"]}],
    direct=[{"groups": ["support"], "delegated": False}],
    delegated=[{"groups": ["support"], "delegated": True}],
    named=[{"groups": ["support"], "claims": {"act.sub": "order-agent"}}],
    any_actor=[{"claims": {"act.sub": {"present": True}}}],
    anyone=[{"authenticated": True}],
)


def test_the_truth_table_of_delegated_for_direct_and_delegated_tokens() -> None:
    person = who(groups=["support"])
    assert ROLES.held(person) == {"default", "direct", "delegated", "anyone"}
    assert ROLES.held(person, deny=True) == ROLES.held(person)
    agent = who(groups=["support"], act=AGENT)
    # granting: only the entries that say so; the subject's claims alone are not enough
    assert ROLES.held(agent) == {"delegated", "named", "any_actor"}
    # denying: an entry that leaves delegated out judges the delegated token on its keys too
    assert ROLES.held(agent, deny=True) == {"default", "delegated", "named", "any_actor", "anyone"}
    other = who(groups=["support"], act={"sub": "some-bot"})
    assert ROLES.held(other) == {"delegated", "any_actor"}
    chain = who(groups=["support"], act={"sub": "order-agent", "act": {"sub": "orchestrator"}})
    assert ROLES.held(chain) == {"delegated", "named", "any_actor"}
    # an empty act is still a delegated token: it names no actor
    assert ROLES.held(who(groups=["support"], act={})) == {"delegated"}


def test_a_flat_act_dot_sub_claim_names_no_actor() -> None:
    flat = who(groups=["support"], **{"act.sub": "order-agent", "act.act.sub": "x"})
    assert not flat.delegated
    assert ROLES.held(flat) == {"default", "direct", "delegated", "anyone"}  # no named, any_actor
    # nested act present, sub only flat: still no actor
    half = who(groups=["support"], act={"client_id": "c"}, **{"act.sub": "order-agent"})
    assert ROLES.held(half) == {"delegated"}


def test_the_trace_gives_the_delegated_verdict_of_each_entry() -> None:
    agent = who(groups=["support"], act=AGENT, sub="user-1")
    results = {r.role: r for r in ROLES.trace(agent)}
    default = results["default"]
    assert not default.holds and default.denies
    entry = default.entries[0]
    assert [(k.key, k.holds) for k in entry.keys] == [("groups", True), ("delegated", False)]
    assert entry.why == (
        "a delegated token: 'order-agent' acting for 'user-1'; the entry neither names the actor "
        "nor says delegated: true"
    )
    direct = results["direct"]
    assert not direct.holds and not direct.denies
    assert direct.entries[0].keys[-1].why.endswith("the entry says delegated: false")
    named = results["named"].entries[0]
    assert named.holds and named.why == "matched groups, claims.act.sub, delegated"
    assert named.keys[-1].why.endswith("the entry names the actor (act.sub)")
    assert results["delegated"].entries[0].keys[-1].why.endswith("; delegated: true")
    # a direct token shows delegated only where the entry says it
    person = {r.role: r for r in ROLES.trace(who(groups=["support"]))}
    assert [k.key for k in person["default"].entries[0].keys] == ["groups"]
    assert person["delegated"].entries[0].keys[-1].why == "a direct token (no act claim)"
    assert person["named"].entries[0].why == "claim act.sub is absent"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"claims": {"act.sub": "a"}, "delegated": False},
            "delegated: false contradicts the claims test on act.sub, which only a delegated "
            "token can pass",
        ),
        (
            {"delegated": True},
            "a role entry needs at least one of issuer, groups, scopes, claims, authenticated "
            "(delegated only says which tokens the others judge)",
        ),
        ({"groups": ["a"], "delegated": "maybe"}, "expected true/false, got 'maybe'"),
    ],
)
def test_delegated_is_checked_at_load(entry: dict[str, Any], message: str) -> None:
    data = base()
    data["roles"]["staff"] = [entry]
    with pytest.raises(PolicyError) as caught:
        load_policy_data(data, base_dir=REPO)
    [problem] = caught.value.problems
    assert problem.where.startswith("roles.staff[0]")
    assert message in problem.message


def test_a_deny_role_bites_an_agent_acting_for_a_person_it_denies() -> None:
    data = base()
    data["roles"]["agents"] = [{"claims": {"act.sub": "order-agent"}}]
    data["routes"][0]["allow"] = ["staff", "agents"]
    policy = compiled(data)
    facts = request_facts("GET /things/1")
    agent = caller(policy, tenant="t1", act=AGENT)
    d = decide(policy, facts, agent)
    assert (d.allow, d.rule, d.roles) == (True, "agents", {"agents"})
    blocked = caller(policy, tenant="t1", act=AGENT, sub="user-666")  # blocked: sub user-666
    d = decide(policy, facts, blocked)
    assert (d.allow, d.reason, d.rule) == (False, "denied-by-role", "blocked")
    assert d.roles == {"agents"}  # blocked denies without holding: it leaves delegated out
    # the person's own staff role grants nothing to the agent
    staff_agent = caller(policy, groups=["staff"], tenant="t1", act={"sub": "bot"})
    d = decide(policy, facts, staff_agent)
    assert (d.reason, d.roles) == ("no-allow-role", frozenset())


def test_delegated_false_in_a_deny_role_spares_delegated_tokens() -> None:
    data = base()
    data["roles"]["blocked"] = [{"claims": {"sub": "user-666"}, "delegated": False}]
    data["roles"]["staff"] = [{"groups": ["staff"], "delegated": True}]
    policy = compiled(data)
    facts = request_facts("GET /things/1")
    person = caller(policy, groups=["staff"], tenant="t1", sub="user-666")
    assert decide(policy, facts, person).reason == "denied-by-role"
    agent = caller(policy, groups=["staff"], tenant="t1", sub="user-666", act=AGENT)
    assert decide(policy, facts, agent).reason == "allowed"


def test_a_parameter_bound_to_act_reads_the_nested_claim_only() -> None:
    data = base()
    data["roles"]["staff"] = [{"groups": ["staff"], "delegated": True}]
    params = data["queries"]["get_thing"]["params"]
    params["id"] = {"type": "STRING", "from": "claim.act.sub"}
    data["routes"][0]["path"] = "/things/mine"
    policy = compiled(data)
    facts = request_facts("GET /things/mine")
    agent = caller(policy, groups=["staff"], tenant="t1", act=AGENT)
    d = decide(policy, facts, agent)
    assert d.allow and d.bound is not None and d.bound.values["id"] == "order-agent"
    flat = caller(policy, groups=["staff"], tenant="t1", **{"act.sub": "order-agent"})
    d = decide(policy, facts, flat)
    assert (d.allow, d.reason) == (False, "claim-missing")
    assert d.problem is not None and "'act.sub'" in d.problem.detail


def test_simulated_claims_with_an_act_that_is_no_object_are_refused() -> None:
    policy = compiled(base())
    with pytest.raises(SimulationError) as caught:
        caller(policy, act="order-agent")
    assert caught.value.key == "claims"
    assert str(caught.value) == (
        "the token's act claim (RFC 8693 delegation) is not a JSON object "
        "(the gateway answers 401 token-malformed)"
    )


# --- the example policy: people-only customers, an agent acting for support reads orders -----

EXAMPLE_POLICY = compile_policy(load_policy(EXAMPLE, env={}))
EXCHANGED = {
    "iss": "okta",
    "sub": "support-console",
    "groups": ["support"],
    "tenant": "t1",
    "cid": "order-agent",
    "scp": ["orders.read"],
    "act": AGENT,
}


def test_the_example_keeps_customers_for_people() -> None:
    agent = principal_for(EXAMPLE_POLICY.model, EXCHANGED)
    d = decide(EXAMPLE_POLICY, request_facts("GET /v1/customers/C-1"), agent)
    assert (d.reason, d.roles) == ("no-allow-role", {"agent-for-support"})
    d = decide(EXAMPLE_POLICY, request_facts("GET /v1/orders/O-1001"), agent)
    assert (d.allow, d.rule) == (True, "agent-for-support")


def test_explain_shows_the_actor_and_the_delegated_verdicts() -> None:
    suspended = principal_for(
        EXAMPLE_POLICY.model, {**EXCHANGED, "groups": ["support", "suspended"]}
    )
    ex = explain(EXAMPLE_POLICY, request_facts("GET /v1/customers/C-1"), suspended)
    lines = render_explanation(EXAMPLE_POLICY, ex).splitlines()
    assert (
        "          delegated (RFC 8693 act): actor 'order-agent' acts for sub support-console"
        in lines
    )
    assert "  - support: does not hold - support staff, any token in the support group" in lines
    delegated_why = (
        "        - delegated: a delegated token: 'order-agent' acting for 'support-console'; "
        "the entry neither names the actor nor says delegated: true"
    )
    assert delegated_why in lines
    assert "  ! suspended: denies (a deny role judges a delegated token all the same)" in lines
    assert any(line.endswith("): holds as a deny role") for line in lines)
    assert "decision  DENY 403 denied-by-role by role suspended: denied by role 'suspended'" in lines
    record = json.loads(json.dumps(explanation_record(ex)))
    assert record["principal"]["delegated"] is True
    assert record["principal"]["actors"] == ["order-agent"]
    roles = {r["role"]: r for r in record["roles"]}
    assert (roles["support"]["holds"], roles["suspended"]["denies"]) == (False, True)
    keys = roles["support"]["entries"][0]["keys"]
    assert [(k["key"], k["holds"]) for k in keys] == [("groups", True), ("delegated", False)]


def test_diff_says_when_delegated_tokens_start_or_stop_holding_a_role() -> None:
    old = load_policy_data(base(), base_dir=REPO).policy
    data = base()
    data["roles"]["staff"] = [{"groups": ["staff"], "delegated": True}]
    data["roles"]["agents"] = [{"claims": {"act.sub": "order-agent"}}]
    new = load_policy_data(data, base_dir=REPO).policy
    changes = {(c.section, c.name): c for c in diff_policies(old, new).changes}
    staff = changes[("roles", "staff")]
    assert staff.summary.startswith("entries changed; delegated tokens (act) now hold it (entries [0])")
    assert staff.lines == (
        '- {"groups": ["staff"]}',
        '+ {"delegated": true, "groups": ["staff"]}',
    )
    assert changes[("roles", "agents")].summary == (
        '[{"claims": {"act.sub": "order-agent"}}]; delegated tokens (act) now hold it (entries [0])'
    )
    back = {(c.section, c.name): c for c in diff_policies(new, old).changes}
    assert "delegated tokens (act) no longer hold it" in back[("roles", "staff")].summary


def test_diff_and_a_warning_say_when_delegated_false_lifts_a_deny_for_agents() -> None:
    old = load_policy_data(base(), base_dir=REPO).policy
    data = base()
    data["roles"]["blocked"] = [{"claims": {"sub": ["user-666"]}, "delegated": False}]
    loaded = load_policy_data(data, base_dir=REPO)
    changes = {(c.section, c.name): c for c in diff_policies(old, loaded.policy).changes}
    blocked = changes[("roles", "blocked")]
    assert blocked.summary.startswith(
        "entries changed; as a deny role it no longer denies delegated tokens (act); "
        "who holds it changes for GET /things/{id} (deny)"
    )
    back = {(c.section, c.name): c for c in diff_policies(loaded.policy, old).changes}
    assert "; as a deny role it now denies delegated tokens (act) (entries [0])" in (
        back[("roles", "blocked")].summary
    )
    # An added entry that says delegated: false: the deny side is [0] before and after, no word.
    data["roles"]["blocked"] = [{"claims": {"sub": ["user-666"]}}, {"groups": ["x"], "delegated": False}]
    grown = load_policy_data(data, base_dir=REPO)
    summary = {(c.section, c.name): c for c in diff_policies(old, grown.policy).changes}
    assert "delegated" not in summary[("roles", "blocked")].summary
    # The loader warns at the entry: it never denies a delegated token.
    [warning] = loaded.warnings
    assert warning.where == "roles.blocked[0].delegated"
    assert warning.message.startswith(
        "delegated: false in role blocked, a deny role of routes[0]: this entry never denies a "
        "delegated token"
    )
    data["roles"]["staff"] = [{"groups": ["staff"], "delegated": False}]  # an allow role: fine
    data["roles"]["blocked"] = [{"claims": {"sub": ["user-666"]}}]
    assert load_policy_data(data, base_dir=REPO).warnings == ()
