"""Budgets: the pure logic with an injected clock, the in-process store, the Redis store against a
real redis-server, and the policy's ``budgets:`` section (validation with file:line:column)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from gateway.auth.principal import Principal
from gateway.budgets.check import Budgets, refundable
from gateway.budgets.core import (
    Counter,
    Limit,
    Usage,
    applicable,
    counters,
    derive_hash_key,
    principal_key,
    rate_headers,
    usages,
    window_key,
)
from gateway.budgets.rates import RATE_FORM, Rate, parse_rate
from gateway.budgets.redis_store import RedisStore
from gateway.budgets.store import MemoryStore, StoreState, StoreUnavailable, Taken
from gateway.dev.ports import free_port
from gateway.dev.redis import RedisProcess, start_redis
from gateway.errors import BudgetExceeded, BudgetStoreUnavailable, PolicyError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.model import Budget

REPO = Path(__file__).resolve().parents[2]
ENV = {"OKTA_ISSUER": "https://idp.example/oauth2/default"}


class Clock:
    def __init__(self, now: float = 1_000_040.0) -> None:  # 20 s into a minute
        self.now = now

    def __call__(self) -> float:
        return self.now


def who(sub: str = "agent-1", **kw: Any) -> Principal:
    return Principal(issuer="okta", iss="https://idp.example", subject=sub, **kw)


def policy_with(tmp_path: Path, budgets: str, extra_roles: str = "", allow: str = "") -> Path:
    text = (REPO / "policy.example.yaml").read_text()
    start = text.index("\nbudgets:")
    end = text.index("\naudit:")
    text = text[:start] + "\n" + budgets.rstrip() + "\n" + text[end:]
    if extra_roles:
        text = text.replace("\nqueries:\n", "\n" + extra_roles.rstrip() + "\n\nqueries:\n", 1)
    if allow:
        text = text.replace("allow: [support, order-agent, agent-for-support]", allow)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def compiled(path: Path) -> CompiledPolicy:
    return compile_policy(load_policy(path, env=ENV))


# -- rates ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "rate"),
    [("60/min", Rate(60, 60)), ("5000/hour", Rate(5000, 3600)), ("100/day", Rate(100, 86_400)),
     ("10/s", Rate(10, 1)), ("30/5min", Rate(30, 300)), (" 7 / 2h ", Rate(7, 7200))],
)  # fmt: skip
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["60", "60/fortnight", "0/min", "-1/min", "60/32day", "x/min", 60])
def test_bad_rates_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


# -- which limits apply -----------------------------------------------------------------------------
def test_the_most_generous_budget_of_the_allowing_roles_applies_per_kind() -> None:
    budgets = {
        "a": Budget(calls="10/min", rows="100/hour"),
        "b": Budget(calls="1000/hour", rows="50/hour"),  # 16.7/min beats 10/min
    }
    limits = {lim.kind: lim for lim in applicable(budgets, ["a", "b"], who(), write=False)}
    assert (limits["calls"].role, limits["calls"].text) == ("b", "1000/hour")
    assert (limits["rows"].role, limits["rows"].text) == ("a", "100/hour")
    assert "writes" not in limits  # a read spends no writes


def test_a_role_without_a_limit_makes_that_kind_unlimited() -> None:
    budgets = {"a": Budget(calls="10/min"), "b": Budget(rows="5/hour")}
    assert applicable(budgets, ["a", "b"], who(), write=False) == ()  # b: no calls; a: no rows
    assert applicable(budgets, ["a", "unbudgeted"], who(), write=False) == ()
    only_a = applicable(budgets, ["a"], who(), write=True)
    assert [lim.kind for lim in only_a] == ["calls"]  # a sets no writes limit


def test_writes_are_spent_by_writes_only() -> None:
    budgets = {"w": Budget(calls="10/min", writes="2/day", rows="1/hour")}
    assert [lim.kind for lim in applicable(budgets, ["w"], who(), write=True)] == [
        "calls", "writes"
    ]  # fmt: skip
    assert [lim.kind for lim in applicable(budgets, ["w"], who(), write=False)] == [
        "calls", "rows"
    ]  # fmt: skip


def test_the_key_is_the_subject_the_client_or_the_actor_as_the_policy_says() -> None:
    direct = who("alice", client_id="app-1")
    delegated = who("alice", client_id="app-1", claims={"act": {"sub": "order-agent"}})
    assert principal_key(direct, "subject") == principal_key(delegated, "subject")
    assert "alice" in principal_key(direct, "subject")
    assert principal_key(direct, "client") == principal_key(who("bob", client_id="app-1"), "client")
    assert principal_key(who("bob"), "client") == principal_key(who("bob"), "subject")  # no cid
    assert principal_key(delegated, "actor") != principal_key(direct, "actor")
    assert "order-agent" in principal_key(delegated, "actor")
    other = who("carol", claims={"act": {"sub": "order-agent"}})
    assert principal_key(other, "actor") == principal_key(delegated, "actor")  # one agent, one budget
    assert principal_key(direct, "actor") == principal_key(direct, "subject")


def test_windows_counters_and_headers() -> None:
    [limit] = applicable({"a": Budget(calls="60/min")}, ["a"], who(), write=False)
    now = 1_000_040.0  # 20 s into its minute
    [counter] = counters([limit])
    assert (counter.limit, counter.cost, counter.window) == (60, 1, 60)
    assert "agent-1" not in counter.key and counter.key.startswith("spangate:budget:v2:{")
    assert window_key(counter, now + 39.9) == window_key(counter, now)  # same window
    assert window_key(counter, now + 40) == f"{counter.key}:{1_000_080 // 60}"  # the next minute
    [usage] = usages([limit], [48], now)
    assert rate_headers([usage]) == {
        "RateLimit-Policy": '"calls";q=60;w=60',
        "RateLimit": '"calls";r=12;t=40',
    }


# -- the check, with an injected clock ----------------------------------------------------------------
def example(tmp_path: Path, budgets: str) -> CompiledPolicy:
    return compiled(policy_with(tmp_path, budgets))


async def test_calls_are_refused_past_the_limit_until_the_window_ends(tmp_path: Path) -> None:
    policy = example(tmp_path, "budgets:\n  order-agent: {calls: 3/min}")
    route = policy.routes[0]
    clock = Clock()
    budgets = Budgets(MemoryStore(), clock=clock)
    roles = frozenset({"order-agent"})
    for left in (2, 1, 0):
        spend = await budgets.spend(policy, route, roles, who())
        assert spend is not None and spend.headers["RateLimit"] == f'"calls";r={left};t=40'
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.spend(policy, route, roles, who())
    error = refused.value
    assert (error.status, error.code) == (429, "budget-exceeded")
    assert error.headers["Retry-After"] == "40"
    assert error.headers["RateLimit-Policy"] == '"calls";q=3;w=60'
    assert error.headers["RateLimit"] == '"calls";r=0;t=40'
    assert error.extra == {"budget": "calls", "role": "order-agent", "limit": "3/min",
                           "retry_after": 40}  # fmt: skip
    assert budgets.refusals == {("order-agent", "calls"): 1}
    assert await budgets.spend(policy, route, roles, who("someone-else")) is not None
    clock.now += 40  # the next minute
    assert await budgets.spend(policy, route, roles, who()) is not None


async def test_rows_are_counted_after_the_read(tmp_path: Path) -> None:
    policy = example(tmp_path, "budgets:\n  order-agent: {rows: 5/hour}")
    route = policy.routes[1]
    clock = Clock()
    budgets = Budgets(MemoryStore(), clock=clock)
    roles = frozenset({"order-agent"})
    spend = await budgets.spend(policy, route, roles, who())
    assert spend is not None
    await budgets.count_rows(spend, 4)
    assert [(u.limit.kind, u.remaining) for u in spend.used] == [("rows", 1)]
    assert spend.headers == {}  # rows are no quota unit of the RateLimit fields
    spend = await budgets.spend(policy, route, roles, who())  # 4 < 5: may read again
    assert spend is not None
    await budgets.count_rows(spend, 3)  # crosses the limit: answered all the same
    assert [(u.limit.kind, u.remaining) for u in spend.used] == [("rows", 0)]
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.spend(policy, route, roles, who())
    assert refused.value.extra["budget"] == "rows"


async def test_a_refused_call_spends_nothing(tmp_path: Path) -> None:
    policy = example(tmp_path, "budgets:\n  order-agent: {calls: 2/min, rows: 1/hour}")
    clock = Clock()
    store = MemoryStore()
    budgets = Budgets(store, clock=clock)
    roles = frozenset({"order-agent"})
    spend = await budgets.spend(policy, policy.routes[1], roles, who())
    assert spend is not None
    await budgets.count_rows(spend, 1)  # rows spent
    for _ in range(3):
        with pytest.raises(BudgetExceeded, match="rows"):
            await budgets.spend(policy, policy.routes[1], roles, who())
    taken = await store.take(counters([u.limit for u in spend.used]), clock())
    assert not taken.ok and taken.values == [1, 1]  # calls: still 1 of 2


async def test_the_memory_store_forgets_expired_windows() -> None:
    now = 1_000_040.0
    store = MemoryStore(sweep_every=2)
    assert await store.take([Counter("k1", 5, 1, 10)], now) == Taken(True, [1], now)
    now += 11  # k1's window ended 1 s after it was taken; it expired a second later
    assert await store.take([Counter("k2", 5, 1, 10)], now) == Taken(True, [1], now)
    assert len(store) == 1  # k1 swept
    assert await store.add(Counter("k2", 5, 1, 10), 3, now) == (4, now)


# -- Redis ----------------------------------------------------------------------------------------
@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    redis_sync.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


DAY = 86_400  # windows of a day: no test straddles one (a day's boundary is midnight UTC)


async def test_the_redis_store_takes_atomically_and_keys_expire(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    try:
        a, b = Counter("t:{x}:a", 2, 1, DAY), Counter("t:{x}:b", 3, 0, DAY)
        first = await store.take([a, b], 0.0)  # the replica's clock: unused
        assert (first.ok, first.values) == (True, [1, 0])
        assert (await store.take([a, b], 0.0)).values == [2, 0]
        refused = await store.take([a, b], 0.0)
        assert (refused.ok, refused.values) == (False, [2, 0])  # a is spent: nothing added
        assert (await store.add(b, 5, 0.0))[0] == 5
        mixed = await store.take([Counter("t:{x}:c", 9, 1, DAY), b], 0.0)
        assert (mixed.ok, mixed.values) == (False, [0, 5])
        sync = redis_sync.Redis.from_url(redis_url)
        seconds, _ = sync.time()
        for counter in (a, b):  # in the window of Redis's clock, expiring a second after it
            key = window_key(counter, first.now)
            assert key == f"{counter.key}:{seconds // DAY}"
            assert 0 < sync.ttl(key) <= DAY - seconds % DAY + 1
        assert sync.keys("t:{x}:c*") == []  # refused: not even created
        # concurrent takes never overspend
        c = Counter("t:{x}:d", 10, 1, DAY)
        answers = await asyncio.gather(*(store.take([c], 0.0) for _ in range(25)))
        assert sum(t.ok for t in answers) == 10 and sync.get(window_key(c, first.now)) == b"10"
    finally:
        await store.aclose()


async def test_replicas_with_skewed_clocks_share_each_window_on_redis(
    tmp_path: Path, redis_url: str
) -> None:
    """Redis's clock picks the window: two replicas 24 hours apart by their own clocks (each
    reads a different day) still spend one daily budget."""
    policy = example(tmp_path, "budgets:\n  order-agent: {calls: 2/day}")
    roles = frozenset({"order-agent"})
    behind = Budgets(RedisStore(redis_url, timeout=2.0), clock=lambda: time.time() - DAY / 2)
    ahead = Budgets(RedisStore(redis_url, timeout=2.0), clock=lambda: time.time() + DAY / 2)
    try:
        for replica in (behind, ahead):
            spend = await replica.spend(policy, policy.routes[0], roles, who())
            assert spend is not None
            assert 0 < spend.used[0].reset <= DAY - int(time.time()) % DAY + 1
        with pytest.raises(BudgetExceeded):
            await behind.spend(policy, policy.routes[0], roles, who())
        [key] = redis_sync.Redis.from_url(redis_url).keys("spangate:budget:v2:*")
        seconds, _ = redis_sync.Redis.from_url(redis_url).time()
        assert key.decode().endswith(f":calls:{DAY}:{seconds // DAY}")
    finally:
        await behind.store.aclose()
        await ahead.store.aclose()


async def test_budgets_on_redis(tmp_path: Path, redis_url: str) -> None:
    policy = example(tmp_path, "budgets:\n  order-agent: {calls: 2/day}")
    budgets = Budgets(RedisStore(redis_url, timeout=2.0))
    roles = frozenset({"order-agent"})
    try:
        for _ in range(2):
            assert await budgets.spend(policy, policy.routes[0], roles, who()) is not None
        with pytest.raises(BudgetExceeded):
            await budgets.spend(policy, policy.routes[0], roles, who())
    finally:
        await budgets.store.aclose()


def pings(sync: redis_sync.Redis) -> int:
    """PING commands the server has run since its stats were reset."""
    stats: dict[str, Any] = sync.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_readiness_probes_are_cached_and_made_one_at_a_time(redis_url: str) -> None:
    """``/readyz``'s PING: at most one per ``probe_every`` seconds (by the injected clock, frozen
    here), and a flood of probes while one is in flight waits for that one."""
    clock = Clock(100.0)
    store = RedisStore(redis_url, timeout=2.0, probe_every=1.0, clock=clock)
    sync = redis_sync.Redis.from_url(redis_url)
    sync.config_resetstat()
    try:
        assert store.state() == StoreState("redis", None, None)  # not asked yet
        await asyncio.gather(*(store.probe() for _ in range(50)))
        await store.probe()
        assert pings(sync) == 1
        assert store.state() == StoreState("redis", True, None)
        clock.now += 0.9
        await store.probe()
        assert pings(sync) == 1
        clock.now += 0.1
        await asyncio.gather(*(store.probe() for _ in range(50)))
        assert pings(sync) == 2
    finally:
        await store.aclose()


async def test_a_flood_of_probes_of_a_hung_redis_opens_one_connection(tmp_path: Path) -> None:
    """Redis stopped (SIGSTOP): 150 probes at once share one PING, so they hold one connection of
    the pool (100 by default) that budget checks draw from; each is answered at the deadline."""
    with start_redis(log_path=tmp_path / "redis.log") as server:
        sync = redis_sync.Redis.from_url(server.url)
        store = RedisStore(server.url, timeout=0.5, clock=Clock(100.0))
        try:
            await store.take([Counter("k", 5, 1, DAY)], 0.0)  # a pooled connection
            before = int(sync.info("stats")["total_connections_received"])
            os.kill(server.pid, signal.SIGSTOP)
            try:
                await asyncio.gather(*(store.probe() for _ in range(150)))
            finally:
                os.kill(server.pid, signal.SIGCONT)
            state = store.state()
            assert state.reachable is False and "Timeout" in (state.last_error or "")
            after = int(sync.info("stats")["total_connections_received"])
            assert after - before <= 1, after - before
            taken = await store.take([Counter("k", 5, 1, DAY)], 0.0)  # checks still work
            assert taken.ok and store.state().reachable is True
        finally:
            await store.aclose()


async def test_an_unreachable_redis_refuses_fast_and_closed(tmp_path: Path) -> None:
    policy = example(tmp_path, "budgets:\n  order-agent: {calls: 2/day}")
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    budgets = Budgets(store)
    try:
        with pytest.raises(StoreUnavailable):
            await store.take([Counter("k", 1, 1, 10)], time.time())
        started = time.monotonic()
        with pytest.raises(BudgetStoreUnavailable) as refused:
            await budgets.spend(policy, policy.routes[0], frozenset({"order-agent"}), who())
        assert time.monotonic() - started < 10  # generous: the deadline is 0.5 s
        assert (refused.value.status, refused.value.code) == (503, "budget-store-unavailable")
        assert refused.value.headers == {"Retry-After": "1"}
    finally:
        await store.aclose()


# -- the policy section -------------------------------------------------------------------------------
def test_the_example_policy_budgets_the_agent() -> None:
    policy = compile_policy(load_policy(REPO / "policy.example.yaml", env=ENV))
    assert policy.model.budgets["order-agent"].calls == "60/min"
    assert policy.model.budgets["order-agent"].per == "subject"


def test_a_budget_for_an_unknown_role_is_located(tmp_path: Path) -> None:
    path = policy_with(tmp_path, "budgets:\n  order-agnet: {calls: 3/min}")
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env=ENV)
    [problem] = caught.value.problems
    line = path.read_text().splitlines().index("  order-agnet: {calls: 3/min}") + 1
    assert problem.line == line and problem.column is not None
    assert "unknown role 'order-agnet'; did you mean 'order-agent'?" in str(problem)


@pytest.mark.parametrize(
    ("body", "message"),
    [("{calls: 3/fortnight}", "calls"), ("{per: tenant, calls: 1/s}", "per"),
     ("{}", "at least one of calls, rows, writes"), ("{calls: 1/min, bogus: 1}", "bogus")],
)  # fmt: skip
def test_bad_budgets_are_located(tmp_path: Path, body: str, message: str) -> None:
    path = policy_with(tmp_path, f"budgets:\n  order-agent: {body}")
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env=ENV)
    text = "\n".join(map(str, caught.value.problems))
    assert message in text
    line = path.read_text().splitlines().index(f"  order-agent: {body}") + 1
    assert all(p.line == line for p in caught.value.problems), text


@pytest.mark.parametrize("rate", ["3/fortnight", "3 per minute", "/min", "x"])
def test_a_rate_that_does_not_parse_says_the_accepted_form(tmp_path: Path, rate: str) -> None:
    """Not the JSON Schema's regular expression: the form, with examples."""
    path = policy_with(tmp_path, f"budgets:\n  order-agent: {{calls: '{rate}'}}")
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env=ENV)
    [problem] = caught.value.problems
    assert problem.where == "budgets.order-agent.calls"
    assert problem.message == f"{rate!r}: {RATE_FORM}"
    assert "60/min" in problem.message and "30/5min" in problem.message
    assert "[0-9]" not in problem.message and "^" not in problem.message
    with pytest.raises(ValueError, match="expected a rate such as 60/min") as refused:
        parse_rate(rate)
    assert str(refused.value) == f"{RATE_FORM}; got {rate!r}"


async def test_writes_are_spent_before_the_statement_and_refused_past_the_limit(
    tmp_path: Path,
) -> None:
    policy = example(tmp_path, "budgets:\n  order-writer: {calls: 10/min, writes: 2/day}")
    create = next(r for r in policy.routes if r.query.is_dml)
    clock = Clock()
    budgets = Budgets(MemoryStore(), clock=clock)
    roles = frozenset({"order-writer"})
    for _ in range(2):
        spend = await budgets.spend(policy, create, roles, who())
        assert spend is not None and [u.limit.kind for u in spend.used] == ["calls", "writes"]
    with pytest.raises(BudgetExceeded) as refused:
        await budgets.spend(policy, create, roles, who())
    assert refused.value.extra["budget"] == "writes"
    assert refused.value.headers["RateLimit-Policy"] == '"calls";q=10;w=60, "writes";q=2;w=86400'
    assert budgets.refusals == {("order-writer", "writes"): 1}


# -- giving back, keys, header bounds ------------------------------------------------------------
async def test_a_refund_gives_back_the_calls_and_writes_of_its_window(tmp_path: Path) -> None:
    policy = example(tmp_path, "budgets:\n  order-writer: {calls: 5/min, writes: 2/day}")
    create = next(r for r in policy.routes if r.query.is_dml)
    clock = Clock()  # 20 s into its minute
    store = MemoryStore()
    budgets = Budgets(store, clock=clock)
    roles = frozenset({"order-writer"})
    spend = await budgets.spend(policy, create, roles, who())
    assert spend is not None and spend.headers["RateLimit"].startswith('"calls";r=4;')
    clock.now += 45  # 5 s into the next minute
    later = await budgets.spend(policy, create, roles, who())  # the new minute's first call
    assert later is not None and [u.used for u in later.used] == [1, 2]
    await budgets.refund(spend)  # to the window it was taken in, not the current one
    await budgets.refund(spend)  # once only
    assert [u.used for u in spend.used] == [0, 1]
    calls = spend.counters[0]
    assert (await store.add(calls, 0, clock.now - 45))[0] == 0  # its minute: given back
    assert (await store.add(calls, 0, clock.now))[0] == 1  # the new minute: untouched
    again = await budgets.spend(policy, create, roles, who())  # the write was given back
    assert again is not None and [u.used for u in again.used] == [2, 2]
    with pytest.raises(BudgetExceeded, match="writes"):
        await budgets.spend(policy, create, roles, who())


async def test_a_redis_refund_never_goes_below_zero_nor_revives_a_counter(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    try:
        a, b = Counter("r:{x}:a", 5, 1, DAY), Counter("r:{x}:b", 5, 1, DAY)
        taken = await store.take([a, b], 0.0)
        assert taken.values == [1, 1]
        sync = redis_sync.Redis.from_url(redis_url)
        sync.delete(window_key(b, taken.now))  # as if it expired
        assert await store.refund([a, b], taken.now) == [0, 0]
        assert await store.refund([a, b], taken.now) == [0, 0]
        assert sync.get(window_key(a, taken.now)) == b"0"
        assert sync.ttl(window_key(a, taken.now)) > 0  # DECRBY kept its expiry
        assert sync.exists(window_key(b, taken.now)) == 0
    finally:
        await store.aclose()


def test_principals_are_hashed_with_a_key_derived_from_the_audit_secret() -> None:
    [limit] = applicable({"a": Budget(calls="60/min")}, ["a"], who(), write=False)
    key = derive_hash_key(b"the audit secret")
    assert key is not None and key != b"the audit secret"
    assert derive_hash_key(b"") is None and derive_hash_key(None) is None
    keyed = counters([limit], key)[0].key
    plain = hashlib.sha256(limit.who.encode()).hexdigest()[:32]
    expected = hmac.new(key, limit.who.encode(), hashlib.sha256).hexdigest()[:32]
    assert keyed == f"spangate:budget:v2:{{{expected}}}:a:calls:60"
    assert plain not in keyed  # not the unsalted hash anyone can compute from a guess
    assert counters([limit], derive_hash_key(b"another secret"))[0].key != keyed
    assert counters([limit])[0].key == f"spangate:budget:v2:{{{plain}}}:a:calls:60"  # no key


def test_header_values_stay_within_the_structured_field_integer_range() -> None:
    huge = Limit("calls", "a", Rate(10**18, 60), "1000000000000000000/min", "x")
    fields = rate_headers([Usage(huge, 5, 10**17)])
    assert fields == {
        "RateLimit-Policy": '"calls";q=999999999999999;w=60',
        "RateLimit": '"calls";r=999999999999999;t=999999999999999',
    }


def test_only_calls_and_writes_are_in_the_ratelimit_fields() -> None:
    """Rows are no registered quota unit (draft-ietf-httpapi-ratelimit-headers: ``qu`` takes
    request, content-bytes or concurrent-requests, and its default is requests): a rows item
    would read as a quota of requests, so rows are left out."""
    budgets = {"a": Budget(calls="60/min", rows="5000/hour")}
    limits = applicable(budgets, ["a"], who(), write=False)
    fields = rate_headers(usages(limits, [1, 10], 1_000_040.0))
    assert fields == {"RateLimit-Policy": '"calls";q=60;w=60', "RateLimit": '"calls";r=59;t=40'}
    rows_only = applicable({"a": Budget(rows="5000/hour")}, ["a"], who(), write=False)
    assert rate_headers(usages(rows_only, [10], 1_000_040.0)) == {}
    assert "qu=" not in fields["RateLimit-Policy"]


def test_a_limit_beyond_the_header_integer_range_is_a_located_load_error(tmp_path: Path) -> None:
    assert parse_rate("999999999999999/day") == Rate(999_999_999_999_999, 86_400)
    body = "{calls: 1000000000000000/day}"
    path = policy_with(tmp_path, f"budgets:\n  order-agent: {body}")
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env=ENV)
    [problem] = caught.value.problems
    assert problem.line == path.read_text().splitlines().index(f"  order-agent: {body}") + 1
    assert "at most 999,999,999,999,999" in problem.message


# -- the load warning ------------------------------------------------------------------------------
def test_a_route_allowing_a_budgeted_and_an_unbudgeted_role_is_a_located_warning(
    tmp_path: Path,
) -> None:
    path = policy_with(tmp_path, "budgets:\n  order-agent: {calls: 60/min}")
    warnings = load_policy(path, env=ENV).warnings
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "allow: [support, order-agent" in line)
    assert [(w.where, w.line, w.column) for w in warnings] == [
        (f"routes[{k}].allow[0]", first + 1 + 5 * k, lines[first].index("support") + 1)
        for k in range(3)
    ]
    assert warnings[0].as_warning() == (
        f"{path}:{first + 1}:{lines[first].index('support') + 1}: warning: routes[0].allow[0]: "
        "role support has no budget, and order-agent, also allowed on GET "
        "/v1/orders/{order_id}, limits calls: a token holding support and order-agent makes "
        "unlimited calls on this route (a call gets, per kind, the most generous limit of the "
        "roles that allow it, and no limit is the most generous); give support a calls limit "
        "too, or allow only one of them"
    )
    # agent-for-support judges delegated tokens only, support direct ones: no token holds both
    path = policy_with(tmp_path, "budgets:\n  agent-for-support: {calls: 60/min}")
    assert load_policy(path, env=ENV).warnings == ()
    # every allowing role budgeted (the example): no warning
    assert load_policy(REPO / "policy.example.yaml", env=ENV).warnings == ()


# -- what a call gets back ---------------------------------------------------------------------------
def test_what_a_call_gets_back_follows_what_it_sent_to_spanner() -> None:
    assert refundable(looked_up=False, statement=False) == {"calls", "writes"}  # nothing
    assert refundable(looked_up=True, statement=False) == {"writes"}  # its key's lookup only
    assert refundable(looked_up=True, statement=True) == frozenset()  # a keyed write that ran
    assert refundable(looked_up=False, statement=True) == frozenset()


async def test_a_refund_of_writes_keeps_the_call_and_gives_each_kind_back_once(
    tmp_path: Path,
) -> None:
    policy = example(tmp_path, "budgets:\n  order-writer: {calls: 5/min, writes: 2/day}")
    create = next(r for r in policy.routes if r.query.is_dml)
    budgets = Budgets(MemoryStore(), clock=Clock())
    roles = frozenset({"order-writer"})
    spend = await budgets.spend(policy, create, roles, who())
    assert spend is not None
    await budgets.refund(spend, {"writes"})
    assert [(u.limit.kind, u.used) for u in spend.used] == [("calls", 1), ("writes", 0)]
    await budgets.refund(spend)  # the calls now; writes were given back already
    await budgets.refund(spend)
    assert [(u.limit.kind, u.used) for u in spend.used] == [("calls", 0), ("writes", 0)]
    again = await budgets.spend(policy, create, roles, who())
    assert again is not None and [u.used for u in again.used] == [1, 1]


def test_the_unbudgeted_warning_is_per_kind(tmp_path: Path) -> None:
    """A role with a budget that sets no limit for a kind leaves that kind unlimited for a token
    that also holds a role limiting it: warned per route and kind (calls; rows for reads; writes
    for writes), at the role without the limit. Kinds a route never spends are not warned."""
    path = policy_with(
        tmp_path,
        "budgets:\n"
        "  support: {calls: 6000/min}\n"  # no rows, while order-agent limits them
        "  order-agent: {calls: 60/min, rows: 5000/hour}\n"
        "  agent-for-support: {calls: 60/min, rows: 5000/hour}\n"
        "  order-writer: {calls: 10/min, writes: 5/day}\n"
        "  batch: {calls: 100/min, rows: 10/hour}\n",  # no writes; rows mean nothing on a write
        extra_roles="  batch:\n    - scopes: [orders.batch]",
    )
    path.write_text(
        path.read_text().replace("allow: [order-writer]", "allow: [order-writer, batch]")
    )
    warnings = load_policy(path, env=ENV).warnings
    lines = path.read_text().splitlines()
    reads = next(i for i, line in enumerate(lines) if "allow: [support, order-agent" in line)
    write = next(i for i, line in enumerate(lines) if "allow: [order-writer, batch]" in line)
    assert [(w.where, w.line, w.column) for w in warnings] == [
        *[(f"routes[{k}].allow[0]", reads + 1 + 5 * k, lines[reads].index("support") + 1)
          for k in range(3)],
        ("routes[4].allow[1]", write + 1, lines[write].index("batch") + 1),
    ]  # fmt: skip
    assert warnings[0].message == (
        "role support has no rows limit in its budget, and order-agent, also allowed on GET "
        "/v1/orders/{order_id}, limits rows: a token holding support and order-agent reads "
        "unlimited rows on this route (a call gets, per kind, the most generous limit of the "
        "roles that allow it, and no limit is the most generous); give support a rows limit "
        "too, or allow only one of them"
    )
    assert warnings[3].message.startswith(
        "role batch has no writes limit in its budget, and order-writer, also allowed on POST "
        "/v1/orders, limits writes: a token holding batch and order-writer makes unlimited "
        "writes on this route"
    )
