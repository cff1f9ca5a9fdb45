from __future__ import annotations

import re
from typing import Any

import pytest
from builders import REPO, base, caller, compiled
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.principal import MISSING, Principal
from gateway.errors import PolicyError
from gateway.policy.load import load_policy_data
from gateway.policy.model import ClaimTest, Role, RoleEntry
from gateway.policy.roles import RoleTable


def table(**roles: Any) -> RoleTable:
    return RoleTable(
        {name: Role.model_validate({"any_of": entries}) for name, entries in roles.items()}
    )


def who(**claims: Any) -> Principal:
    return caller(compiled(base()), **claims)


def test_groups_any_scopes_all_issuer_and_authenticated() -> None:
    roles = table(
        g=[{"groups": ["a", "b"]}],
        s=[{"scopes": ["r", "w"]}],
        i=[{"issuer": "okta"}],
        c=[{"issuer": "corp"}],
        anyone=[{"authenticated": True}],
    )
    assert roles.held(who(groups=["b"], scp=["r"])) == {"g", "i", "anyone"}
    assert roles.held(who(scp=["w", "r", "x"])) == {"s", "i", "anyone"}


def test_an_entry_needs_all_its_keys_and_a_role_any_entry() -> None:
    roles = table(agent=[{"scopes": ["r"], "claims": {"agent": True}}, {"groups": ["ops"]}])
    assert roles.held(who(scp=["r"], agent=True)) == {"agent"}
    assert roles.held(who(scp=["r"])) == frozenset()
    assert roles.held(who(groups=["ops"])) == {"agent"}


def test_claims_equal_any_of_dotted_and_strictly_typed() -> None:
    roles = table(
        eq=[{"claims": {"tier": "gold"}}],
        anyof=[{"claims": {"tier": ["gold", "silver"]}}],
        nested=[{"claims": {"org.unit": "sales"}}],
        flag=[{"claims": {"agent": True}}],
        num=[{"claims": {"level": 3}}],
    )
    assert roles.held(who(tier="silver")) == {"anyof"}
    assert roles.held(who(tier=["bronze", "gold"])) == {
        "eq",
        "anyof",
    }  # an array claim: any element
    assert roles.held(who(org={"unit": "sales"})) == {"nested"}
    assert roles.held(who(agent="true", level="3")) == frozenset()  # "true" is not true
    assert roles.held(who(agent=1)) == frozenset()
    assert roles.held(who(level=3.0)) == {"num"}


def test_claims_matches_a_whole_value() -> None:
    roles = table(corp=[{"claims": {"email": {"matches": r"[^@]+@corp\.example"}}}])
    assert roles.held(who(email="ann@corp.example")) == {"corp"}
    # fullmatch: no forgotten anchor lets a longer value in
    assert roles.held(who(email="ann@corp.example.evil.test")) == frozenset()
    assert roles.held(who(email="x-ann@corp.example ")) == frozenset()
    assert roles.held(who(email=["bob@else.test", "ann@corp.example"])) == {"corp"}
    assert roles.held(who(email=7)) == frozenset()
    assert roles.held(who()) == frozenset()


def test_claims_present() -> None:
    roles = table(dept=[{"claims": {"department": {"present": True}}}])
    assert roles.held(who(department="")) == {"dept"}
    assert roles.held(who(department=[])) == {"dept"}
    assert roles.held(who(department=None)) == frozenset()  # null counts as absent
    assert roles.held(who()) == frozenset()


def test_the_trace_says_which_entry_held_and_why_the_others_failed() -> None:
    roles = table(
        agent=[{"issuer": "corp", "scopes": ["r"]}, {"claims": {"email": {"matches": ".*@x"}}}],
    )
    [result] = roles.trace(who(scp=["w"], email="a@x"))
    assert result.holds and result.held_by is not None and result.held_by.index == 1
    first = result.entries[0]
    assert not first.holds
    assert [(k.key, k.holds) for k in first.keys] == [("issuer", False), ("scopes", False)]
    assert first.why == "issuer is 'okta', not 'corp'; missing scopes ['r']"
    assert result.entries[1].why == "matched claims.email"
    [absent] = table(r=[{"claims": {"tier": "gold"}}]).trace(who())
    assert absent.entries[0].why == "claim tier is absent"


def test_a_role_may_be_written_as_a_mapping_with_a_description() -> None:
    data = base()
    data["roles"]["staff"] = {"description": "people at work", "any_of": [{"groups": ["staff"]}]}
    policy = compiled(data)
    assert policy.model.roles["staff"].description == "people at work"
    assert policy.roles.held(caller(policy, groups=["staff"])) == {"staff"}


@pytest.mark.parametrize(
    ("value", "where", "message"),
    [
        ({"matches": "("}, ".matches", "invalid regular expression: missing )"),
        ({"matches": "a", "present": True}, "", "give exactly one of matches, present"),
        ({"present": False}, ".present", "unexpected value false; expected true"),
        ({"matchs": "a"}, ".matchs", "unknown key 'matchs'; did you mean 'matches'?"),
    ],
)
def test_claim_tests_are_checked_at_load(value: dict[str, Any], where: str, message: str) -> None:
    data = base()
    data["roles"]["staff"] = [{"claims": {"email": value}}]
    with pytest.raises(PolicyError) as caught:
        load_policy_data(data, base_dir=REPO)
    [problem] = caught.value.problems
    assert problem.where == "roles.staff[0].claims.email" + where
    assert problem.message.startswith(message)


def test_a_role_with_no_entries_is_refused() -> None:
    data = base()
    data["roles"]["staff"] = []
    with pytest.raises(PolicyError) as caught:
        load_policy_data(data, base_dir=REPO)
    assert [(p.where, p.message) for p in caught.value.problems] == [
        ("roles.staff", "must not be empty")
    ]


# --- property: the compiled predicates agree with an independent reading of the rules ----------

GROUPS = st.frozensets(st.sampled_from(["a", "b", "c"]), max_size=3)
SCALARS = st.sampled_from(["x", "y", 1, 2, True, False, 1.0])
CLAIM_TESTS = st.one_of(
    SCALARS,
    st.lists(SCALARS, min_size=1, max_size=3),
    st.builds(ClaimTest, matches=st.sampled_from(["x", "x|y", "[a-z]+", "1"])),
    st.just(ClaimTest(present=True)),
)
def _entry(**keys: Any) -> RoleEntry:
    if keys["delegated"] is False and "act.sub" in (keys["claims"] or {}):
        keys["delegated"] = None  # a load error: delegated: false and a test under act
    return RoleEntry(**keys)


ENTRIES = st.builds(
    _entry,
    issuer=st.sampled_from([None, "okta", "corp"]),
    groups=st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2)),
    scopes=st.one_of(st.none(), st.lists(st.sampled_from(["r", "w"]), min_size=1, max_size=2)),
    claims=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["k", "m.n", "act.sub"]), CLAIM_TESTS, min_size=1)
    ),
    authenticated=st.just(True),
    delegated=st.sampled_from([None, True, False]),
)
CLAIM_VALUES = st.one_of(st.none(), SCALARS, st.lists(SCALARS, max_size=3), st.just(MISSING))
ACTS = st.one_of(st.just(MISSING), st.just({}), st.builds(lambda v: {"sub": v}, SCALARS))


def _lookup(claims: Any, path: str) -> Any:
    """The claim at one of the paths the entries use: nested first; flat only outside act."""
    if "." not in path:
        return claims.get(path, MISSING)
    head, tail = path.split(".", 1)
    node = claims.get(head)
    if isinstance(node, dict) and tail in node:
        return node[tail]
    return MISSING if head == "act" else claims.get(path, MISSING)


def oracle(entry: RoleEntry, p: Principal, deny: bool = False) -> bool:
    if "act" in p.claims:  # a delegated token: the truth table of docs/policy/roles.md
        names_actor = entry.claims is not None and "act.sub" in entry.claims
        if not (entry.delegated or names_actor or (deny and entry.delegated is None)):
            return False
    if entry.issuer is not None and entry.issuer != p.issuer:
        return False
    if entry.groups is not None and not set(entry.groups) & p.groups:
        return False
    if entry.scopes is not None and not set(entry.scopes) <= p.scopes:
        return False
    for path, test in (entry.claims or {}).items():
        actual = _lookup(p.claims, path)
        values = actual if isinstance(actual, list) else [actual]
        if isinstance(test, ClaimTest) and test.present:
            ok = actual is not MISSING and actual is not None
        elif isinstance(test, ClaimTest):
            assert test.matches is not None
            ok = any(isinstance(v, str) and re.fullmatch(test.matches, v) for v in values)
        else:
            wanted = test if isinstance(test, list) else [test]
            ok = actual is not MISSING and any(
                (type(v) is type(w)
                and v == w)
                or (type(v) in (int, float) and type(w) in (int, float) and v == w)
                for v in values
                for w in wanted
            )
        if not ok:
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    st.lists(ENTRIES, min_size=1, max_size=3),
    st.sampled_from(["okta", "corp"]),
    GROUPS,
    st.frozensets(st.sampled_from(["r", "w"])),
    CLAIM_VALUES,
    CLAIM_VALUES,
    ACTS,
    st.booleans(),
)
def test_role_matching_agrees_with_the_rules(
    entries: list[RoleEntry],
    issuer: str,
    groups: frozenset[str],
    scopes: frozenset[str],
    k: Any,
    mn: Any,
    act: Any,
    flat_act_sub: bool,
) -> None:
    claims: dict[str, Any] = {}
    if k is not MISSING:
        claims["k"] = k
    if mn is not MISSING:
        claims["m"] = {"n": mn}
    if act is not MISSING:
        claims["act"] = act
    if flat_act_sub:  # never read: act.sub is the nested claim only
        claims["act.sub"] = k if k is not MISSING else "x"
    principal = Principal(
        issuer=issuer, iss="", subject="s", scopes=scopes, groups=groups, claims=claims
    )
    roles = RoleTable({"r": Role(any_of=entries)})
    expected = any(oracle(e, principal) for e in entries)
    assert ("r" in roles.held(principal)) is expected
    denies = any(oracle(e, principal, deny=True) for e in entries)
    assert ("r" in roles.held(principal, deny=True)) is denies
    [trace] = roles.trace(principal)
    assert trace.holds is expected
    assert trace.denies is denies
    assert [e.holds for e in trace.entries] == [oracle(e, principal) for e in entries]


def test_an_entry_written_without_its_dash_is_explained() -> None:
    data = base()
    data["roles"]["staff"] = {"groups": ["staff"]}
    with pytest.raises(PolicyError) as caught:
        load_policy_data(data, base_dir=REPO)
    assert [(p.where, p.message) for p in caught.value.problems] == [
        (
            "roles.staff",
            "a role is a list of entries: write '- ' before this entry, or put it under any_of",
        )
    ]
