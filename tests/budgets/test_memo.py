"""The budget check's memo (``gateway.budgets.memo``): what it hands back is exactly what the pure
core computes for the same call (``applicable``, ``counters``, ``rate_headers``), whoever calls,
with whatever roles, on whichever policy object; and it stays within its bound."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.principal import Principal
from gateway.budgets.check import Budgets, Spend
from gateway.budgets.core import (
    applicable,
    counters,
    derive_hash_key,
    policy_field,
    rate_headers,
    usages,
)
from gateway.budgets.memo import KEY_CHARS, ChargeMemo
from gateway.budgets.rates import parse_rate, rate_of
from gateway.budgets.store import MemoryStore
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy

REPO = Path(__file__).resolve().parents[2]
ENV = {"OKTA_ISSUER": "https://idp.example/oauth2/default"}
KEY = derive_hash_key(b"test-audit-key")
BUDGETS = """budgets:
  support: {calls: 100/min, rows: 1000/hour}
  order-agent: {calls: 60/min, rows: 500/hour, per: client}
  agent-for-support: {calls: 100/min, rows: 200/hour, per: actor}
  order-writer: {calls: 10/min, writes: 5/day, per: client}
"""


class Clock:
    def __init__(self, now: float = 1_000_040.0) -> None:  # 20 s into a minute
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy_file(tmp_path: Path, budgets: str, name: str = "policy.yaml") -> Path:
    text = (REPO / "policy.example.yaml").read_text()
    start, end = text.index("\nbudgets:"), text.index("\naudit:")
    path = tmp_path / name
    path.write_text(text[:start] + "\n" + budgets.rstrip() + "\n" + text[end:])
    return path


def compiled(path: Path) -> CompiledPolicy:
    return compile_policy(load_policy(path, env=ENV))


def who(sub: str = "alice", iss: str = "https://idp.example", **kw: Any) -> Principal:
    return Principal(issuer="okta", iss=iss, subject=sub, **kw)


def act(*actors: str | None) -> dict[str, Any]:
    """An ``act`` claim: the current actor first, each one acting for the next."""
    claim: dict[str, Any] = {}
    for actor in reversed(actors):
        claim = {"sub": actor, "act": claim} if claim else {"sub": actor}
    return {"act": claim}


PRINCIPALS = [
    who("alice"),
    who("bob"),
    who("alice", iss="https://other.example"),  # another issuer's alice
    who("alice", client_id="app-1"),
    who("bob", client_id="app-1"),
    who("alice", client_id="app-2"),
    who("alice", client_id="app-1", claims=act("order-agent")),  # delegated
    who("carol", claims=act("order-agent")),
    who("carol", claims=act("other-agent", "order-agent")),
    who("carol", claims={"act": {}}),  # delegated, the actor unnamed
]
ROLE_SETS = [
    frozenset(),
    frozenset({"support"}),
    frozenset({"support", "support-leads"}),
    frozenset({"order-agent"}),
    frozenset({"agent-for-support"}),
    frozenset({"support", "order-agent"}),
    frozenset({"order-agent", "agent-for-support"}),
    frozenset({"order-writer"}),
    frozenset({"order-writer", "support"}),
]


def reference(
    policy: CompiledPolicy, route: Any, roles: frozenset[str], principal: Principal
) -> tuple[Any, ...]:
    """What the check computed per call before the memo: limits, counters, the policy field."""
    allowing = [r for r in route.model.allow if r in roles]
    limits = applicable(policy.model.budgets, allowing, principal, write=route.query.is_dml)
    return limits, tuple(counters(limits, KEY)), policy_field(limits)


@pytest.mark.parametrize("size", [4096, 7, 1])
def test_the_memo_answers_what_the_core_computes_for_every_call(tmp_path: Path, size: int) -> None:
    policy = compiled(policy_file(tmp_path, BUDGETS))
    memo = ChargeMemo(KEY, size=size)
    calls = list(itertools.product(policy.routes, ROLE_SETS, PRINCIPALS))
    budgeted = 0
    for order in (calls, calls[::-1]):  # the second round reads what the first remembered
        for route, roles, principal in order:
            limits, wanted, field = reference(policy, route, roles, principal)
            charge = memo.charge(policy, route, roles, principal)
            if not limits:
                assert charge is None
                continue
            budgeted += 1
            assert charge is not None
            assert (charge.limits, charge.counters, charge.policy_field) == (limits, wanted, field)
            assert len(memo) <= size
    assert budgeted > 100  # the cases spend budgets of every kind and ``per``


def test_a_caller_is_known_by_its_values_and_per_says_which(tmp_path: Path) -> None:
    policy = compiled(policy_file(tmp_path, BUDGETS))
    read, write = policy.routes[0], policy.routes[4]
    assert write.query.is_dml and not read.query.is_dml
    memo = ChargeMemo(KEY)

    def keys(roles: set[str], principal: Principal, route: Any = read) -> tuple[str, ...]:
        charge = memo.charge(policy, route, frozenset(roles), principal)
        assert charge is not None
        return tuple(c.key for c in charge.counters)

    # the same values in a new Principal (a new token of the same caller): the same charge
    first = memo.charge(policy, read, frozenset({"support"}), who("alice", client_id="app-1"))
    again = memo.charge(policy, read, frozenset({"support"}), who("alice", client_id="app-1"))
    assert first is not None and again is first
    # per: subject: the subject's budget, whatever its client or actor
    subject = keys({"support"}, who("alice"))
    assert keys({"support"}, who("bob")) != subject
    assert keys({"support"}, who("alice", iss="https://other.example")) != subject
    assert keys({"support"}, who("alice", client_id="app-2", claims=act("x"))) == subject
    # per: client: one budget per client id (the subject's when there is none)
    client = keys({"order-agent"}, who("alice", client_id="app-1"))
    assert keys({"order-agent"}, who("bob", client_id="app-1")) == client
    assert keys({"order-agent"}, who("alice", client_id="app-2")) != client
    assert keys({"order-agent"}, who("alice")) != client
    # per: actor: one budget per current actor of delegated tokens, whoever they act for
    actor = keys({"agent-for-support"}, who("alice", claims=act("order-agent")))
    assert keys({"agent-for-support"}, who("bob", claims=act("order-agent"))) == actor
    assert keys({"agent-for-support"}, who("bob", claims=act("order-agent", "x"))) == actor
    assert keys({"agent-for-support"}, who("bob", claims=act("x", "order-agent"))) != actor
    direct = keys({"agent-for-support"}, who("alice"))
    assert direct != actor
    assert direct[0].split(":")[3] == subject[0].split(":")[3]  # a direct token: its subject
    # roles: other roles, other limits (and a write spends writes, not rows)
    assert keys({"support"}, who("alice")) != keys({"order-agent"}, who("alice"))
    writes = memo.charge(policy, write, frozenset({"order-writer"}), who("svc", client_id="w"))
    assert writes is not None
    assert [(lim.kind, lim.text) for lim in writes.limits] == [("calls", "10/min"), ("writes", "5/day")]


def test_a_caller_with_a_long_key_is_computed_every_time_never_kept(tmp_path: Path) -> None:
    policy = compiled(policy_file(tmp_path, BUDGETS))
    memo, route, roles = ChargeMemo(KEY), policy.routes[0], frozenset({"support"})
    long = who("x" * KEY_CHARS)
    first = memo.charge(policy, route, roles, long)
    assert first is not None and first.limits == reference(policy, route, roles, long)[0]
    assert len(memo) == 0
    again = memo.charge(policy, route, roles, long)
    assert again == first and again is not first
    assert memo.charge(policy, route, roles, who("x" * 900)) is not None and len(memo) == 1


async def test_a_reloaded_policy_never_reads_the_limits_of_the_one_before(tmp_path: Path) -> None:
    before = compiled(policy_file(tmp_path, "budgets:\n  support: {calls: 3/min}"))
    after = compiled(policy_file(tmp_path, "budgets:\n  support: {calls: 5/min}", "new.yaml"))
    budgets = Budgets(MemoryStore(), clock=Clock(), key=KEY)
    roles, caller = frozenset({"support"}), who("alice")
    for _ in range(3):
        assert await budgets.spend(before, before.routes[0], roles, caller) is not None
    spend = await budgets.spend(after, after.routes[0], roles, caller)  # 4 of 5: allowed
    assert spend is not None and spend.used[0].limit.text == "5/min"
    assert spend.headers == {"RateLimit-Policy": '"calls";q=5;w=60', "RateLimit": '"calls";r=1;t=40'}
    # the same text compiled again is another policy: remembered anew, equal to the core's answer
    memo = ChargeMemo(KEY)
    for _ in range(2):
        policy = compiled(policy_file(tmp_path, BUDGETS))
        for principal in PRINCIPALS:
            charge = memo.charge(policy, policy.routes[0], frozenset({"support"}), principal)
            assert charge is not None
            assert charge.limits == reference(policy, policy.routes[0], roles, principal)[0]
        assert len(memo) == 4  # alice, bob, carol, another issuer's alice: none of the first


async def test_the_headers_are_computed_once_and_again_after_a_refund(tmp_path: Path) -> None:
    policy = compiled(policy_file(tmp_path, BUDGETS))
    budgets = Budgets(MemoryStore(), clock=Clock(), key=KEY)
    spend = await budgets.spend(policy, policy.routes[0], frozenset({"support"}), who())
    assert spend is not None
    first = spend.headers
    assert first == {"RateLimit-Policy": '"calls";q=100;w=60', "RateLimit": '"calls";r=99;t=40'}
    assert spend.headers is first  # not computed twice
    await budgets.count_rows(spend, 7)  # rows are not shown: the same fields
    assert spend.used[1].used == 7 and spend.headers is first
    await budgets.refund(spend, ("calls",))
    assert spend.headers == {"RateLimit-Policy": '"calls";q=100;w=60', "RateLimit": '"calls";r=100;t=40'}
    assert spend.headers == rate_headers(spend.used)
    plain = Spend(list(spend.used))  # no policy field kept: computed, the same bytes
    assert plain.headers == spend.headers


@pytest.mark.parametrize(
    "budget",
    ["{calls: 7/min, rows: 9/hour}", "{rows: 9/hour}", "{calls: 2/s, writes: 999999999999999/day}"],
)
def test_a_kept_policy_field_gives_the_same_headers(tmp_path: Path, budget: str) -> None:
    policy = compiled(policy_file(tmp_path, f"budgets:\n  order-writer: {budget}"))
    for route in policy.routes:
        limits = reference(policy, route, frozenset({"order-writer"}), who())[0]
        used = usages(limits, [3] * len(limits), 1_000_040.0)
        assert rate_headers(used, policy_field(limits)) == rate_headers(used)


def test_rates_are_parsed_once() -> None:
    assert rate_of("60/min") == parse_rate("60/min") and rate_of("60/min") is rate_of("60/min")
    for _ in range(2):  # a text that does not parse is refused each time
        with pytest.raises(ValueError, match="rate"):
            rate_of("60/fortnight")
