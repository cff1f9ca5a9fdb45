"""The load warning for a route that allows a budgeted and an unbudgeted role. Pure.

A call gets the most generous budget of the roles that hold and allow its route, and a role
without a budget is the most generous of all: a token holding both spends nothing. The loader
cannot know which tokens exist, so it warns for every such pair of roles one token could hold
together, and keeps quiet only about pairs that provably cannot: each entry of one and each
entry of the other name different issuers, or judge different tokens (an allow role's entry
without ``delegated`` judges direct tokens only; one with a claims test under ``act`` judges
delegated tokens only; ``delegated: true``, both).
"""

from __future__ import annotations

from gateway.policy.constraints import Finding, Where
from gateway.policy.model import Policy, RoleEntry

__all__ = ["unbudgeted_roles"]


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


def unbudgeted_roles(policy: Policy) -> list[Finding]:
    """A warning at each unbudgeted role of a route's ``allow`` that a token may hold together
    with a budgeted role of the same ``allow`` (roles also in the route's ``deny`` never get
    through, and are left out)."""
    if not policy.budgets:
        return []
    found: list[Finding] = []
    for i, route in enumerate(policy.routes):
        allowed = [r for r in route.allow if r in policy.roles and r not in route.deny]
        budgeted = [r for r in allowed if r in policy.budgets]
        for k, role in enumerate(route.allow):
            if role not in allowed or role in policy.budgets:
                continue
            with_it = [b for b in budgeted if _may_meet(policy, role, b)]
            if not with_it:
                continue
            where: Where = ("routes", i, "allow", k)
            have = "has a budget" if len(with_it) == 1 else "have budgets"
            found.append((where, (
                f"role {role} has no budget, and {', '.join(with_it)}, also allowed on "
                f"{route.method} {route.path}, {have}: a token holding {role} and "
                f"{_names(with_it)} spends no budget on this route (a call gets the most "
                f"generous budget of the roles that allow it, and no budget is the most "
                f"generous); give {role} a budget too, or allow only one of them"
            )))
    return found
