"""Which budgets a call spends, their counters and the RateLimit header fields. Pure.

A budget is a fixed window per (role, kind, principal): ``calls: 60/min`` allows 60 calls in each
wall-clock minute (windows start at multiples of their length since the epoch). Whose clock says
which window it is belongs to the store: the in-process store takes the replica's (injected)
clock, Redis its own (``TIME``), so replicas whose clocks disagree still count in one window.
``calls`` and ``writes`` are spent before the statement runs and given back for what a call never
sent to Spanner (see ``check.refundable``); ``rows`` are counted after a read ran, and refuse the
next call once spent.

A caller whose token holds several roles that allow the route gets, per kind, the most generous
of those roles' limits (the highest rate, then the highest count); a kind is unlimited when one
of those roles sets no limit for it (or has no budget at all).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.budgets.rates import MAX_COUNT, Rate
from gateway.policy.model import Budget

__all__ = [
    "HEADER_KINDS",
    "KINDS",
    "UNKEYED_WARNING",
    "Choice",
    "Counter",
    "Limit",
    "Usage",
    "applicable",
    "choose",
    "counters",
    "derive_hash_key",
    "policy_field",
    "principal_key",
    "rate_headers",
    "usages",
    "window",
    "window_key",
]

KINDS = ("calls", "rows", "writes")
KEY_PREFIX = "spangate:budget:v2"
UNKEYED_WARNING = (
    "budget counters in Redis name each principal by a plain SHA-256 of its issuer and subject "
    "(or client, or actor): anyone who can read Redis can test a guessed identity against them; "
    "set SPANGATE_AUDIT_KEY (the same on every replica) to key them"
)

# The kinds the RateLimit fields carry. Their quota unit is the draft's default ("requests": each
# call, and each write, is one request; the draft leaves which requests consume a unit to the
# server). Rows are left out: draft-ietf-httpapi-ratelimit-headers allows only registered quota
# units in ``qu`` (request, content-bytes, concurrent-requests) and treats any other parameter as
# a comment, so a rows item would read as a quota of requests whatever vendor parameter it had.
HEADER_KINDS = ("calls", "writes")


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
    """A store's counter: refuse when it holds ``limit`` or more, else add ``cost``. ``key`` names
    the budget; the store appends the index of the current ``window`` (seconds) by its own clock
    (``window_key``), and the counter expires on its own once that window is over."""

    key: str
    limit: int
    cost: int
    window: int


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


def derive_hash_key(secret: bytes | None) -> bytes | None:
    """The key of principal hashes, derived from the audit secret (``SPANGATE_AUDIT_KEY``) with a
    label of its own, so it is neither the chain's nor the redactions' key; None without one."""
    if not secret:
        return None
    return hmac.new(secret, b"spangate budget principal v1", hashlib.sha256).digest()


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


@dataclass(frozen=True)
class Choice:
    """A limit a call spends, whoever calls: ``kind`` of ``role``'s budget, counted ``per``."""

    kind: str
    role: str
    rate: Rate
    text: str  # as the policy wrote it: 60/min
    per: str  # the budget's ``per`` (``principal_key``)


def choose(
    budgets: Mapping[str, Budget], allowing: Iterable[str], *, write: bool
) -> tuple[Choice, ...]:
    """``applicable`` without the principal: what it depends on alone is ``budgets``, the roles
    ``allowing`` (in order: the first of equally generous roles wins) and ``write``."""
    roles = list(dict.fromkeys(allowing))
    if not roles or not budgets:
        return ()
    kinds = ("calls", "writes") if write else ("calls", "rows")
    out: list[Choice] = []
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
            out.append(Choice(kind, role, rate, getattr(budget, kind), budget.per))
    return tuple(out)


def applicable(
    budgets: Mapping[str, Budget],
    allowing: Iterable[str],
    principal: Principal,
    *,
    write: bool,
) -> tuple[Limit, ...]:
    """The limits a call spends: ``allowing`` are the roles that hold and allow the route.
    ``calls`` always, ``writes`` for a write, ``rows`` for a read."""
    return tuple(
        Limit(c.kind, c.role, c.rate, c.text, principal_key(principal, c.per))
        for c in choose(budgets, allowing, write=write)
    )


def window(length: int, now: float) -> tuple[int, int]:
    """(the index of the window of ``length`` seconds that holds ``now``, seconds until it ends,
    at least 1), by whole seconds: exactly what the Redis script computes from ``TIME``."""
    second = math.floor(now)
    index = second // length
    return index, max(1, (index + 1) * length - second)


def window_key(counter: Counter, now: float) -> str:
    """The store's key of ``counter`` in the window of ``now``."""
    return f"{counter.key}:{window(counter.window, now)[0]}"


def _who(limit: Limit, key: bytes | None) -> str:
    """The principal in a store key: HMAC-SHA256 keyed with ``derive_hash_key`` (no token data in the
    store, and no way to test a guessed identity without the key); plain SHA-256 without one."""
    data = limit.who.encode()
    if key is None:
        return hashlib.sha256(data).hexdigest()[:32]
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


def counters(limits: Sequence[Limit], key: bytes | None = None) -> list[Counter]:
    """The counters checked before the statement: calls and writes cost 1, rows 0 (counted
    after). The principal is in braces, a Redis Cluster hash tag: one principal's counters share
    a slot."""
    return [
        Counter(
            f"{KEY_PREFIX}:{{{_who(limit, key)}}}:{limit.role}:{limit.kind}:{limit.rate.window}",
            limit.rate.limit,
            0 if limit.kind == "rows" else 1,
            limit.rate.window,
        )
        for limit in limits
    ]


def usages(limits: Sequence[Limit], values: Sequence[int], now: float) -> list[Usage]:
    return [
        Usage(limit, value, window(limit.rate.window, now)[1])
        for limit, value in zip(limits, values, strict=True)
    ]


def _integer(value: int) -> int:
    """A structured field Integer: at most 15 digits (RFC 9651 §3.3.1)."""
    return max(0, min(value, MAX_COUNT))


def policy_field(limits: Iterable[Limit]) -> str | None:
    """The ``RateLimit-Policy`` field of ``limits`` (see ``rate_headers``): it depends on the
    limits alone, so a caller that keeps them may keep it. None: no limit of ``HEADER_KINDS``."""
    field = ", ".join(
        f'"{lim.kind}";q={_integer(lim.rate.limit)};w={_integer(lim.rate.window)}'
        for lim in limits
        if lim.kind in HEADER_KINDS
    )
    return field or None


def rate_headers(used: Sequence[Usage], policy: str | None = None) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers, structured
    fields): one item per budget of ``HEADER_KINDS``, named by its kind; ``q`` quota, ``w`` window
    (s), ``r`` remaining, ``t`` seconds until the window resets, each capped to the Integer
    range. No ``qu``: the default unit, requests, is what calls and writes count. ``policy``: the
    ``policy_field`` of ``used``'s limits when the caller kept it (else computed here)."""
    current = ", ".join(
        [
            f'"{u.limit.kind}";r={_integer(u.remaining)};t={_integer(u.reset)}'
            for u in used
            if u.limit.kind in HEADER_KINDS
        ]
    )
    if not current:
        return {}
    if policy is None:
        policy = policy_field(u.limit for u in used) or ""  # never empty: ``current`` is not
    return {"RateLimit-Policy": policy, "RateLimit": current}
