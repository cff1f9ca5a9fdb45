from __future__ import annotations

import copy
from typing import Any

from builders import REPO, base, caller, compiled
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.compiled import compile_policy
from gateway.policy.decide import REASONS, RequestFacts, decide
from gateway.policy.load import load_policy_data
from gateway.policy.simulate import request_facts

POLICY = compiled(base())


def test_allowed_with_the_query_and_typed_bound_params() -> None:
    d = decide(
        POLICY,
        request_facts("POST /things", {"id": "T-1"}),
        caller(POLICY, groups=["staff"], tenant="t1"),
    )
    assert (d.allow, d.reason, d.query_name, d.rule) == (True, "allowed", "add_thing", "staff")
    assert d.bound is not None and d.bound.values == {"id": "T-1", "tenant": "t1", "size": 1}
    assert d.bound.claim_bound == {"tenant"}


def test_each_reason_in_order() -> None:
    staff = caller(POLICY, groups=["staff"], tenant="t1")
    cases = {
        "GET /nothing": "no-route",
        "PUT /things/1": "method-not-allowed",
        "GET /things/%2e%2e": "path-invalid",
        "GET /things/1?x=1": "param-unknown",
    }
    for request, reason in cases.items():
        assert decide(POLICY, request_facts(request), staff).reason == reason
    post = request_facts("POST /things", {"id": "T-1", "size": -1})
    assert decide(POLICY, post, staff).reason == "param-invalid"
    assert decide(POLICY, request_facts("POST /things", {}), staff).reason == "param-missing"
    no_tenant = caller(POLICY, groups=["staff"])
    assert decide(POLICY, request_facts("GET /things/1"), no_tenant).reason == "claim-missing"
    bad_tenant = caller(POLICY, groups=["staff"], tenant=7)
    assert decide(POLICY, request_facts("GET /things/1"), bad_tenant).reason == "claim-invalid"
    outsider = caller(POLICY, groups=["x"], tenant="t1")
    assert decide(POLICY, request_facts("GET /things/1"), outsider).reason == "no-allow-role"
    blocked = caller(POLICY, groups=["staff"], tenant="t1", sub="user-666")
    d = decide(POLICY, request_facts("GET /things/1"), blocked)
    assert (d.reason, d.rule, d.problem and d.problem.status) == ("denied-by-role", "blocked", 403)


def test_roles_are_checked_before_parameters() -> None:
    outsider = caller(POLICY, groups=["x"])
    assert decide(POLICY, request_facts("GET /things/1?nope=1"), outsider).reason == "no-allow-role"


def test_ignored_caller_values_are_known_whatever_the_outcome() -> None:
    staff = caller(POLICY, groups=["staff"], tenant="t1")
    outsider = caller(POLICY, groups=["x"], tenant="t1")
    blocked = caller(POLICY, groups=["staff"], tenant="t1", sub="user-666")
    cases = [
        (staff, "GET /things/1?tenant=t2", "allowed"),
        (outsider, "GET /things/1?tenant=t2", "no-allow-role"),
        (blocked, "GET /things/1?tenant=t2", "denied-by-role"),
        (staff, "GET /things/1?nope=1&tenant=t2", "param-unknown"),  # the other one comes first
        (caller(POLICY, groups=["staff"]), "GET /things/1?tenant=t2", "claim-missing"),
    ]
    for who, request, reason in cases:
        d = decide(POLICY, request_facts(request), who)
        assert (d.reason, d.ignored) == (reason, {"tenant": "t2"}), request
    d = decide(POLICY, request_facts("GET /things/1?tenant=t2&tenant=t3"), outsider)
    assert d.ignored == {"tenant": ["t2", "t3"]}
    body = request_facts("POST /things", {"id": "T-1", "size": -1, "tenant": {"t": 2}})
    d = decide(POLICY, body, staff)
    assert (d.reason, d.ignored) == ("param-invalid", {"tenant": {"t": 2}})
    assert decide(POLICY, request_facts("GET /nothing?tenant=t2"), staff).ignored == {}


def test_every_reason_is_listed() -> None:
    assert len(set(REASONS)) == len(REASONS) == 11


# --- property: adding a deny never turns a deny into an allow ------------------------------------

GROUPS = ["g0", "g1", "g2", "g3"]
ROLE_NAMES = ["r0", "r1", "r2", "r3"]
ENTRY = st.fixed_dictionaries(
    {"groups": st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2, unique=True)},
    optional={
        "scopes": st.lists(st.sampled_from(["s0", "s1"]), min_size=1, max_size=2, unique=True),
        "delegated": st.booleans(),
    },
)
ROLES = st.fixed_dictionaries(
    {name: st.lists(ENTRY, min_size=1, max_size=2) for name in ROLE_NAMES}
)
NAMES = st.lists(st.sampled_from(ROLE_NAMES), max_size=3, unique=True)
ROUTES = st.lists(
    st.fixed_dictionaries({"allow": NAMES.filter(bool), "deny": NAMES}),
    min_size=2,
    max_size=2,
)
REQUESTS = st.sampled_from(
    ["GET /things/1", "POST /things", "GET /things/%2e", "GET /x", "PUT /things"]
)


def policy_data(roles: dict[str, Any], routes: list[dict[str, Any]]) -> dict[str, Any]:
    data = base()
    data["roles"] = roles
    for route, rbac in zip(data["routes"], routes, strict=True):
        route.update(rbac)
    return data


@settings(max_examples=300, deadline=None)
@given(
    ROLES,
    ROUTES,
    st.lists(st.sampled_from(GROUPS), max_size=4, unique=True),
    st.lists(st.sampled_from(["s0", "s1"]), unique=True),
    REQUESTS,
    st.integers(0, 1),
    st.sampled_from(ROLE_NAMES),
    ENTRY,
    st.sampled_from([None, {"sub": "agent"}]),
)
def test_adding_a_deny_never_turns_a_deny_into_an_allow(
    roles: dict[str, Any],
    routes: list[dict[str, Any]],
    groups: list[str],
    scopes: list[str],
    request: str,
    which: int,
    denied: str,
    entry: dict[str, Any],
    act: dict[str, Any] | None,
) -> None:
    before = compile_policy(load_policy_data(policy_data(roles, routes), base_dir=REPO))
    # Three ways to add a deny: a role added to a route's deny list, a new deny role, and an
    # entry added to a role that a route already denies (more callers hold it).
    more_deny = copy.deepcopy(routes)
    more_deny[which]["deny"] = list(dict.fromkeys([*more_deny[which]["deny"], denied]))
    new_role = copy.deepcopy(routes)
    new_role[which]["deny"] = [*new_role[which]["deny"], "extra"]
    wider = copy.deepcopy(roles)
    allowing = {name for rbac in routes for name in rbac["allow"]}
    for rbac in routes:
        for name in set(rbac["deny"]) - allowing:  # a role that only denies
            wider[name] = [*wider[name], entry]
    afters = [
        policy_data(roles, more_deny),
        policy_data({**roles, "extra": [entry]}, new_role),
        policy_data(wider, routes),
    ]
    delegation = {} if act is None else {"act": act}  # a delegated token, or a direct one
    principal = caller(before, groups=groups, scp=scopes, tenant="t1", **delegation)
    facts: RequestFacts = request_facts(
        request, {"id": "1"} if request.startswith("POST") else None
    )
    first = decide(before, facts, principal)
    if first.route is not None:  # the decision is the rule: deny wins, then some allow must hold
        held = before.roles.held(principal)
        rbac = routes[first.route.index]
        if before.roles.held(principal, deny=True) & set(rbac["deny"]):
            assert first.reason == "denied-by-role"
        elif not held & set(rbac["allow"]):
            assert first.reason == "no-allow-role"
        else:
            assert first.reason not in ("denied-by-role", "no-allow-role")
    for data in afters:
        after = decide(compile_policy(load_policy_data(data, base_dir=REPO)), facts, principal)
        if not first.allow:
            assert not after.allow
        if after.allow:  # and an allow that stays is the same decision
            assert (
                first.allow and after.bound == first.bound and after.query_name == first.query_name
            )
