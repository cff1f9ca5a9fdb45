"""The load warning for a route whose allowed roles limit a kind of budget unevenly. Pure.

A call gets, per kind (``calls``; ``rows`` for a read; ``writes`` for a write), the most generous
limit of the roles that hold and allow its route, and a role that sets no limit for a kind (no
budget at all, or a budget without that kind) is the most generous of all: a token holding it
and a role that limits the kind is not limited in that kind. The loader cannot know which tokens
exist, so it warns for every such pair of roles one token could hold together, and keeps quiet
only about pairs that provably cannot: each entry of one and each entry of the other name
different issuers, or judge different tokens (an allow role's entry without ``delegated`` judges
direct tokens only; one with a claims test under ``act`` judges delegated tokens only;
``delegated: true``, both).
"""

from __future__ import annotations

from gateway.policy.constraints import Finding, Where
from gateway.policy.model import Policy, RoleEntry, Route
from gateway.policy.sqlscan import SqlProblem, scan_sql

__all__ = ["unbudgeted_roles"]

# What a token holding both roles escapes, per kind.
_UNLIMITED = {
    "calls": "makes unlimited calls",
    "rows": "reads unlimited rows",
    "writes": "makes unlimited writes",
}


def _tokens(entry: RoleEntry) -> frozenset[str]:
    """Which tokens an entry of an allow role judges: direct, delegated, or both."""
    if entry.actor_claims:
        return frozenset({"delegated"})
    if entry.delegated:
        return frozenset({"direct", "delegated"})
    return frozenset({"direct"})


def _exclusive(a: RoleEntry, b: RoleEntry) -> bool:
    """No token can satisfy both entries."""
    if a.issuer is not None and b.issuer is not None and a.issuer != b.issuer:
        return True
    return not _tokens(a) & _tokens(b)


def _may_meet(policy: Policy, one: str, other: str) -> bool:
    """Whether one token may hold both roles (True unless provably not)."""
    a, b = policy.roles[one], policy.roles[other]
    return any(not _exclusive(x, y) for x in a.any_of for y in b.any_of)


def _names(roles: list[str]) -> str:
    return roles[0] if len(roles) == 1 else ", ".join(roles[:-1]) + " or " + roles[-1]


def _kinds(policy: Policy, route: Route) -> tuple[str, ...]:
    """The kinds a call of ``route`` spends: calls, and writes (DML) or rows (a read); all three
    when its query is missing or its SQL is refused (a load error says so anyway)."""
    query = policy.queries.get(route.query)
    if query is None:
        return ("calls", "rows", "writes")
    try:
        kind = scan_sql(query.sql, policy.spanner.dialect, tuple(query.params)).kind
    except SqlProblem:
        return ("calls", "rows", "writes")
    return ("calls", "writes") if kind == "dml" else ("calls", "rows")


def _limits(policy: Policy, role: str, kind: str) -> bool:
    budget = policy.budgets.get(role)
    return budget is not None and getattr(budget, kind) is not None


def unbudgeted_roles(policy: Policy) -> list[Finding]:
    """A warning at each role of a route's ``allow`` that sets no limit for a kind the route
    spends, per kind, when a token may hold it together with a role of the same ``allow`` that
    limits that kind (roles also in the route's ``deny`` never get through, and are left out)."""
    if not policy.budgets:
        return []
    found: list[Finding] = []
    for i, route in enumerate(policy.routes):
        allowed = [r for r in route.allow if r in policy.roles and r not in route.deny]
        kinds = _kinds(policy, route)
        for k, role in enumerate(route.allow):
            if role not in allowed:
                continue
            for kind in kinds:
                if _limits(policy, role, kind):
                    continue
                with_it = [
                    b for b in allowed if _limits(policy, b, kind) and _may_meet(policy, role, b)
                ]
                if not with_it:
                    continue
                where: Where = ("routes", i, "allow", k)
                lacks = (
                    f"has no {kind} limit in its budget"
                    if role in policy.budgets
                    else "has no budget"
                )
                limit = "limits" if len(with_it) == 1 else "limit"
                found.append((where, (
                    f"role {role} {lacks}, and {', '.join(with_it)}, also allowed on "
                    f"{route.method} {route.path}, {limit} {kind}: a token holding {role} and "
                    f"{_names(with_it)} {_UNLIMITED[kind]} on this route (a call gets, per "
                    f"kind, the most generous limit of the roles that allow it, and no limit is "
                    f"the most generous); give {role} a {kind} limit too, or allow only one of "
                    f"them"
                )))
    return found
