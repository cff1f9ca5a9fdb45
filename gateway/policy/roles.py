"""Claims -> roles. Pure: a Principal and the policy's role table in, the roles that hold out.

A role holds if ANY of its entries holds; an entry holds if ALL of its keys hold:

- ``issuer``: the token came from the issuer of that name;
- ``groups``: the principal is in ANY of the groups;
- ``scopes``: the principal has ALL of the scopes;
- ``claims``: each claim (dotted path allowed) equals the value; a list of values means any of.
  When the token's claim is itself an array, it holds if ANY element equals ANY value. Types are
  compared strictly: ``true`` never equals ``"true"`` or ``1``;
- ``authenticated: true``: any verified token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth.principal import MISSING, Principal
from gateway.policy.model import RoleEntry

__all__ = ["EntryResult", "RoleResult", "evaluate_roles", "held_roles"]


@dataclass(frozen=True)
class EntryResult:
    index: int
    holds: bool
    why: str  # what held, or the first key that failed and why


@dataclass(frozen=True)
class RoleResult:
    role: str
    holds: bool
    entries: tuple[EntryResult, ...]


def _same(a: Any, b: Any) -> bool:
    return (
        (type(a) is type(b)
        and a == b)
        or (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and not isinstance(a, bool)
            and not isinstance(b, bool)
            and a == b
        )
    )


def _claim_matches(actual: Any, expected: Any) -> bool:
    wanted = expected if isinstance(expected, list) else [expected]
    candidates = actual if isinstance(actual, list) else [actual]
    return any(_same(c, w) for c in candidates for w in wanted)


def entry_holds(entry: RoleEntry, principal: Principal) -> tuple[bool, str]:
    """Whether one entry holds, with a short explanation for ``explain``."""
    if entry.issuer is not None and principal.issuer != entry.issuer:
        return False, f"issuer is {principal.issuer!r}, not {entry.issuer!r}"
    if entry.groups is not None and principal.groups.isdisjoint(entry.groups):
        return False, f"in none of the groups {entry.groups}"
    if entry.scopes is not None:
        missing = [s for s in entry.scopes if s not in principal.scopes]
        if missing:
            return False, f"missing scopes {missing}"
    if entry.claims is not None:
        for path, expected in entry.claims.items():
            actual = principal.claim(path)
            if actual is MISSING:
                return False, f"claim {path} is absent"
            if not _claim_matches(actual, expected):
                return False, f"claim {path} is {actual!r}, not {expected!r}"
    held = [
        k
        for k in ("issuer", "groups", "scopes", "claims", "authenticated")
        if getattr(entry, k) is not None
    ]
    return True, "matched " + ", ".join(held)


def evaluate_roles(
    roles: Mapping[str, Sequence[RoleEntry]],
    principal: Principal,
    names: Sequence[str] | None = None,
) -> list[RoleResult]:
    """Every role (or those named), each with the verdict of each entry: the trace for explain."""
    out = []
    for role in names if names is not None else roles:
        results = []
        for i, entry in enumerate(roles.get(role, ())):
            holds, why = entry_holds(entry, principal)
            results.append(EntryResult(i, holds, why))
        out.append(RoleResult(role, any(r.holds for r in results), tuple(results)))
    return out


def held_roles(roles: Mapping[str, Sequence[RoleEntry]], principal: Principal) -> frozenset[str]:
    """The names of the roles that hold for ``principal`` (stops at each role's first holding entry)."""
    return frozenset(
        name
        for name, entries in roles.items()
        if any(entry_holds(e, principal)[0] for e in entries)
    )
