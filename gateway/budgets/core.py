"""Which budgets a call spends, their counters and the RateLimit header fields. Pure.

A budget is a fixed window per (role, kind, principal): ``calls: 60/min`` allows 60 calls in each
wall-clock minute (windows start at multiples of their length since the epoch, so every replica
agrees on them). ``calls`` and ``writes`` are spent before the statement runs (a refused call
spends nothing); ``rows`` are counted after a read ran, and refuse the next call once spent.

A caller whose token holds several roles that allow the route gets, per kind, the most generous
of those roles' limits (the highest rate, then the highest count); a kind is unlimited when one
of those roles sets no limit for it (or has no budget at all).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.budgets.rates import Rate
from gateway.policy.model import Budget

__all__ = [
    "KINDS",
    "Counter",
    "Limit",
    "Usage",
    "applicable",
    "counters",
    "principal_key",
    "rate_headers",
    "usages",
]

KINDS = ("calls", "rows", "writes")
KEY_PREFIX = "spangate:budget:v1"


@dataclass(frozen=True)
class Limit:
    """One budget a call spends: ``kind`` of ``role``'s budget, for the principal ``who``."""

    kind: str
    role: str
    rate: Rate
    text: str  # as the policy wrote it: 60/min
    who: str  # the principal key (``principal_key``)


@dataclass(frozen=True)
class Counter:
    """A store's counter: refuse when it holds ``limit`` or more, else add ``cost``; it expires
    on its own ``ttl`` seconds after its last update (its window is over by then)."""

    key: str
    limit: int
    cost: int
    ttl: int


@dataclass(frozen=True)
class Usage:
    limit: Limit
    used: int
    reset: int  # seconds until the window ends (at least 1)

    @property
    def remaining(self) -> int:
        return max(0, self.limit.rate.limit - self.used)

    @property
    def spent(self) -> bool:
        return self.used >= self.limit.rate.limit


def principal_key(principal: Principal, per: str) -> str:
    """Whose budget: ``subject`` (issuer URL + sub), ``client`` (the client id, else the
    subject), ``actor`` (a delegated token's current actor, act.sub; else the subject)."""
    subject = f"sub\x1f{principal.iss}\x1f{principal.subject}"
    if per == "client" and principal.client_id:
        return f"client\x1f{principal.iss}\x1f{principal.client_id}"
    if per == "actor" and principal.delegated:
        actor = principal.actors[0] if principal.actors else None
        return f"actor\x1f{principal.iss}\x1f{actor}"
    return subject


def _more_generous(a: Rate, b: Rate) -> bool:
    return (a.per_second, a.limit) > (b.per_second, b.limit)


def applicable(
    budgets: Mapping[str, Budget],
    allowing: Iterable[str],
    principal: Principal,
    *,
    write: bool,
) -> tuple[Limit, ...]:
    """The limits a call spends: ``allowing`` are the roles that hold and allow the route.
    ``calls`` always, ``writes`` for a write, ``rows`` for a read."""
    roles = list(dict.fromkeys(allowing))
    if not roles or not budgets:
        return ()
    kinds = ("calls", "writes") if write else ("calls", "rows")
    out: list[Limit] = []
    for kind in kinds:
        best: tuple[str, Rate, Budget] | None = None
        for role in roles:
            budget = budgets.get(role)
            rate = budget.rate(kind) if budget is not None else None
            if budget is None or rate is None:
                best = None  # this role spends nothing of this kind: the most generous
                break
            if best is None or _more_generous(rate, best[1]):
                best = (role, rate, budget)
        if best is not None:
            role, rate, budget = best
            text = getattr(budget, kind)
            out.append(Limit(kind, role, rate, text, principal_key(principal, budget.per)))
    return tuple(out)


def _window(rate: Rate, now: float) -> tuple[int, int]:
    """(the window's index, seconds until it ends, at least 1)."""
    index = int(now // rate.window)
    return index, max(1, math.ceil((index + 1) * rate.window - now))


def counter_key(limit: Limit, now: float) -> str:
    """The store's key of ``limit``'s current window. The principal is hashed (no token data in
    the store) and in braces, a Redis Cluster hash tag: one principal's counters share a slot."""
    index, _ = _window(limit.rate, now)
    who = hashlib.sha256(limit.who.encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}:{{{who}}}:{limit.role}:{limit.kind}:{limit.rate.window}:{index}"


def counters(limits: Sequence[Limit], now: float) -> list[Counter]:
    """The counters checked before the statement: calls and writes cost 1, rows 0 (counted after)."""
    return [
        Counter(
            counter_key(limit, now),
            limit.rate.limit,
            0 if limit.kind == "rows" else 1,
            _window(limit.rate, now)[1] + 1,
        )
        for limit in limits
    ]


def usages(limits: Sequence[Limit], values: Sequence[int], now: float) -> list[Usage]:
    return [
        Usage(limit, value, _window(limit.rate, now)[1])
        for limit, value in zip(limits, values, strict=True)
    ]


def rate_headers(used: Sequence[Usage]) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers, structured
    fields): one item per budget, named by its kind; ``q`` quota, ``w`` window (s), ``r``
    remaining, ``t`` seconds until the window resets."""
    if not used:
        return {}
    policies = ", ".join(
        f'"{u.limit.kind}";q={u.limit.rate.limit};w={u.limit.rate.window}' for u in used
    )
    current = ", ".join(f'"{u.limit.kind}";r={u.remaining};t={u.reset}' for u in used)
    return {"RateLimit-Policy": policies, "RateLimit": current}
