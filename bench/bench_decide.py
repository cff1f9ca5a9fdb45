"""Decision time (route match + roles + binding: ``decide``) with 10, 1,000 and 10,000 routes.

Each policy has ten roles (group-based, one with two entries) and routes in pairs over distinct
resources, ``GET /v1/r{k}/things/{id}`` and ``GET /v1/r{k}/things``; a request mix of allowed
calls, denials (no allow role, a deny role) and unknown paths is decided one call at a time, each
call timed on its own. Matching walks the path's segments, not the route list: the last row
sends the first row's requests to the 10,000-route policy and costs the same; what the third row
adds is memory locality (its requests touch 5,000 resources). The note gives the time to load
(validate) and compile each policy, which is what a reload costs before the swap.

The shadow rows measure what ``spangate serve --shadow-policy`` adds to a call: the live
decision, then the token as the candidate's issuers read it (``ShadowIssuers.principal``, its
mapping worked out once per swap; the candidate's issuer has ``claims:`` overrides, which the
mapping compares), the candidate's decision (the policy less one role's place on every route:
the note says how many calls disagree) and the comparison (``shadow.disagreement``), as
``Gateway`` runs them; the note gives the median the shadow step adds per call.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from bench.table import Row, Table
from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.load import load_policy_data
from gateway.policy.shadow import ShadowIssuers, disagreement

__all__ = ["policy_with", "run"]

ROLES = 10


# An MCP tool is named after its query unless the route says otherwise, and two tools may not
# share a name: only the first pair of routes offers its query as a tool.
NO_TOOL: dict[str, Any] = {"tool": False}


def policy_with(routes: int) -> dict[str, Any]:
    """A valid policy of ``routes`` routes (an even number), as plain data."""
    roles: dict[str, Any] = {f"role{r}": [{"groups": [f"g{r}"]}] for r in range(ROLES)}
    roles["role0"].append({"scopes": ["things.read"], "claims": {"agent": True}})
    table = []
    for k in range(routes // 2):
        allow = [f"role{k % ROLES}", f"role{(k + 1) % ROLES}"]
        deny = [f"role{(k + 5) % ROLES}"]
        table.append(
            {
                "path": f"/v1/r{k}/things/{{id}}",
                "method": "GET",
                "query": "get_thing",
                "allow": allow,
                "deny": deny,
                **({} if k == 0 else NO_TOOL),
            }
        )
        table.append(
            {
                "path": f"/v1/r{k}/things",
                "method": "GET",
                "query": "list_things",
                "allow": allow,
                "deny": deny,
                **({} if k == 0 else NO_TOOL),
            }
        )
    return {
        "version": 1,
        "spanner": {"project": "p", "instance": "i", "database": "d"},
        "issuers": {"okta": {"issuer": "https://idp.example", "audience": "api", "preset": "okta"}},
        "identities": {"reader": {"database_role": "reader"}},
        "roles": roles,
        "queries": {
            "get_thing": {
                "identity": "reader",
                "sql": "SELECT * FROM Things WHERE Tenant = @tenant AND Id = @id",
                "params": {
                    "tenant": {"type": "STRING", "from": "claim.tenant"},
                    "id": {"type": "STRING", "max_length": 36},
                },
            },
            "list_things": {
                "identity": "reader",
                "sql": "SELECT * FROM Things WHERE Tenant = @tenant LIMIT @limit",
                "params": {
                    "tenant": {"type": "STRING", "from": "claim.tenant"},
                    "limit": {"type": "INT64", "min": 1, "max": 100, "default": 20},
                },
            },
        },
        "routes": table,
    }


def _requests(routes: int, count: int, rng: random.Random) -> list[RequestFacts]:
    out = []
    for _ in range(count):
        k = rng.randrange(routes // 2)
        roll = rng.random()
        if roll < 0.45:
            out.append(RequestFacts("GET", f"/v1/r{k}/things/T-{rng.randrange(10_000)}"))
        elif roll < 0.9:
            out.append(RequestFacts("GET", f"/v1/r{k}/things", (("limit", "10"),)))
        else:
            out.append(RequestFacts("GET", f"/v1/r{k}/nothing"))
    return out


def _principal(rng: random.Random) -> Principal:
    groups = frozenset(f"g{g}" for g in rng.sample(range(ROLES), 2))
    return Principal(
        issuer="okta",
        iss="https://idp.example",
        subject="u",
        groups=groups,
        claims={"tenant": "t1"},
    )


def _candidate(routes: int) -> dict[str, Any]:
    """``policy_with(routes)`` less ``role1`` on every route: a change to shadow; its issuer
    names its claims (the same ones: the token is read as the live policy reads it)."""
    data = policy_with(routes)
    data["issuers"]["okta"]["claims"] = {"groups": "groups"}
    for route in data["routes"]:
        route["allow"] = [r for r in route["allow"] if r != "role1"] or ["role0"]
    return data


def _measure_shadow(
    live: CompiledPolicy, shadow: CompiledPolicy, count: int, spread: int
) -> tuple[list[float], list[float], float, int]:
    """(live + shadow per call, the shadow step alone per call, wall, disagreements)."""
    rng = random.Random(spread)  # noqa: S311 - a reproducible request mix, not a secret
    requests = _requests(spread, count, rng)
    principals = [_principal(rng) for _ in range(64)]
    issuers = ShadowIssuers(live.model, shadow.model)  # as Gateway.swap works it out
    both: list[float] = []
    step: list[float] = []
    differ = 0
    clock = time.perf_counter
    started = clock()
    for i, facts in enumerate(requests):
        principal = principals[i & 63]
        t0 = clock()
        decision = decide(live, facts, principal)
        t1 = clock()
        seen = issuers.principal(principal)
        assert not isinstance(seen, str)
        verdict = decide(shadow, facts, seen)
        found = disagreement(decision, decision.reason, verdict, shadow.sha256)
        t2 = clock()
        both.append(t2 - t0)
        step.append(t2 - t1)
        differ += found is not None
    return both, step, clock() - started, differ


def _measure(
    policy: CompiledPolicy, routes: int, count: int, spread: int
) -> tuple[list[float], float, int]:
    rng = random.Random(spread)  # noqa: S311 - a reproducible request mix, not a secret
    requests = _requests(spread, count, rng)
    principals = [_principal(rng) for _ in range(64)]
    latencies: list[float] = []
    allowed = 0
    clock = time.perf_counter
    started = clock()
    for i, facts in enumerate(requests):
        t0 = clock()
        decision = decide(policy, facts, principals[i & 63])
        latencies.append(clock() - t0)
        allowed += decision.allow
    return latencies, clock() - started, allowed


def run(quick: bool) -> Table:
    table = Table("decide(): route + roles + binding, one call at a time", unit="decisions/s")
    count = 2_000 if quick else 50_000
    # The last row sends the requests of the first to the largest policy: the same work per
    # decision, so what the third row adds is memory locality (5,000 resources touched), not
    # route count.
    for routes, spread, label in (
        (10, 10, "10 routes"),
        (1_000, 1_000, "1,000 routes"),
        (10_000, 10_000, "10,000 routes"),
        (10_000, 10, "10,000 routes, requests of the 10-route row"),
    ):
        t0 = time.perf_counter()
        loaded = load_policy_data(policy_with(routes), base_dir=Path.cwd())
        t1 = time.perf_counter()
        policy = compile_policy(loaded)
        t2 = time.perf_counter()
        warm = _principal(random.Random(0))  # noqa: S311 - not a secret
        decide(policy, RequestFacts("GET", "/v1/r0/things"), warm)
        latencies, wall, allowed = _measure(policy, routes, count, spread)
        note = (
            f"load {1000 * (t1 - t0):,.0f} ms, compile {1000 * (t2 - t1):,.0f} ms, "
            f"{100 * allowed / count:.0f}% allowed"
        )
        table.add(Row.from_latencies(label, latencies, wall, note))
    for routes in (10, 1_000):
        live = compile_policy(load_policy_data(policy_with(routes), base_dir=Path.cwd()))
        shadow = compile_policy(load_policy_data(_candidate(routes), base_dir=Path.cwd()))
        both, step, wall, differ = _measure_shadow(live, shadow, count, routes)
        added = sorted(step)[len(step) // 2] * 1e6
        note = (
            f"the shadow step adds {added:.1f} us (p50), {100 * differ / count:.0f}% disagree"
        )
        table.add(Row.from_latencies(f"{routes:,} routes, live + shadow", both, wall, note))
    return table
