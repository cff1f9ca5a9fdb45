"""What the budget check computes before it asks the store, remembered per call's inputs: the
limits a call spends, their counters (whose keys hash the principal: an HMAC per limit) and the
``RateLimit-Policy`` field. Pure (no I/O); what it holds is derived from values alone.

Why remembering is safe, memo by memo (each belongs to one ``CompiledPolicy`` object: another one,
as every reload compiles, empties both before it is read, so no policy's limits serve another):

- plans: (the roles that hold and allow the route, in the route's order; whether the route
  writes) -> ``core.choose``'s answer, which reads nothing else but the policy's budgets.
- charges: (a plan, the principal's key for each ``per`` the plan counts by, exactly as
  ``core.principal_key`` gives it) -> the limits and counters. A ``Limit`` is its ``Choice`` plus
  that key, a ``Counter`` its limit plus the hash key (fixed for this memo's life): equal memo
  keys give equal values. The principal's key is built from the token's values on every call
  (``iss``, ``sub``, the client id, ``act``), never from a Principal object's identity (the token
  cache may or may not hand the same object back): a new token of the same caller hits, another
  caller never does.

Bounded: a memo that holds ``size`` entries is emptied before it takes another, so a flood of
distinct callers costs each of them one computation (what every call cost without the memo),
never unbounded memory; a caller whose principal keys are longer than ``KEY_CHARS`` is never
kept. What it holds is frozen and shared by the calls that hit it. Not locked: a process serves
its calls on one event loop thread (more workers are more processes) and ``charge`` never awaits;
were it called from threads, a dict's get or set is atomic under the GIL and each call reads the
memos of its own policy once, so a race loses entries (computed again), never mixes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.budgets.core import (
    Choice,
    Counter,
    Limit,
    choose,
    counters,
    policy_field,
    principal_key,
)
from gateway.policy.compiled import CompiledPolicy, CompiledRoute

__all__ = ["KEY_CHARS", "MEMO_SIZE", "Charge", "ChargeMemo"]

# Charges (callers x plans) held before the memo is emptied. An entry took ~1.2 KB (measured,
# Okta-sized ids); one whose principal keys are longer than KEY_CHARS (a token's sub may be
# kilobytes) is computed every time, never kept: the memo stays under ~10 MB.
MEMO_SIZE = 4096
KEY_CHARS = 1024


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: a cheap memo key
class _Plan:
    choices: tuple[Choice, ...]
    pers: tuple[str, ...]  # the distinct ``per`` of the choices, in order


@dataclass(frozen=True)
class Charge:
    """What a call spends: its limits, their counters, and the limits' ``RateLimit-Policy``
    field (None: no limit of ``core.HEADER_KINDS``)."""

    limits: tuple[Limit, ...]
    counters: tuple[Counter, ...]
    policy_field: str | None


class _Memos:
    """The memos of one policy object."""

    __slots__ = ("charges", "plans", "policy")

    def __init__(self, policy: CompiledPolicy | None) -> None:
        self.policy = policy
        self.plans: dict[tuple[tuple[str, ...], bool], _Plan] = {}
        self.charges: dict[tuple[_Plan, str | tuple[str, ...]], Charge] = {}


class ChargeMemo:
    """``charge(...)``: the ``Charge`` of a call, None when no budget applies; ``key`` is the
    key of principal hashes (``core.derive_hash_key``)."""

    def __init__(self, key: bytes | None, *, size: int = MEMO_SIZE) -> None:
        self._key = key
        self._size = size
        self._memos = _Memos(None)

    def __len__(self) -> int:
        """The charges held."""
        return len(self._memos.charges)

    def charge(
        self, policy: CompiledPolicy, route: CompiledRoute, roles: frozenset[str], who: Principal
    ) -> Charge | None:
        memos = self._memos  # read once: another policy's memos never serve this call
        if memos.policy is not policy:  # a reload: nothing of the policy before is reused
            memos = self._memos = _Memos(policy)
        write = route.query.is_dml
        allowing = tuple([r for r in route.model.allow if r in roles])
        plan = memos.plans.get((allowing, write))
        if plan is None:
            choices = choose(policy.model.budgets, allowing, write=write)
            plan = _Plan(choices, tuple(dict.fromkeys(c.per for c in choices)))
            if len(memos.plans) >= self._size:
                memos.plans.clear()
            memos.plans[(allowing, write)] = plan
        pers = plan.pers
        if not pers:
            return None  # no budget applies
        whom: str | tuple[str, ...] = (
            principal_key(who, pers[0])
            if len(pers) == 1
            else tuple([principal_key(who, per) for per in pers])
        )
        found = memos.charges.get((plan, whom))
        if found is None:
            keys = dict(zip(pers, (whom,) if isinstance(whom, str) else whom, strict=True))
            limits = tuple(
                Limit(c.kind, c.role, c.rate, c.text, keys[c.per]) for c in plan.choices
            )
            found = Charge(limits, tuple(counters(limits, self._key)), policy_field(limits))
            if (len(whom) if isinstance(whom, str) else sum(map(len, whom))) > KEY_CHARS:
                return found  # computed every time: a long key is not worth its memory
            if len(memos.charges) >= self._size:
                memos.charges.clear()
            memos.charges[(plan, whom)] = found
        return found
