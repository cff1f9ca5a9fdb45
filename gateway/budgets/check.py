"""The budget check of ``Gateway._run``: spend before the statement, count rows after, and give
back what a call spent on what it never sent to Spanner (``refundable``).

What a call spends: a call whose statement ran, or may have run (a write whose outcome is
``unknown``), has spent its ``calls`` (and ``writes``). A call that sent nothing to Spanner gets
both back: refused after the check (Spanner's limits, 503 up front while Spanner is unreachable
or too many writes settle). A keyed write that read its Idempotency-Key record and then ran no
DML (a replay, 422 ``idempotency-key-reused``, the key's table missing, cut by its deadline
during the lookup) keeps its ``calls`` spent (a read-write transaction read, and locked, the
key's row: looping replays is not free) and gets its ``writes`` back. The refund is an atomic
decrement in the same store and window (``BudgetStore.refund``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from gateway.auth.principal import Principal
from gateway.budgets.core import HEADER_KINDS, Counter, Limit, Usage, rate_headers
from gateway.budgets.core import usages as usages_of
from gateway.budgets.memo import ChargeMemo
from gateway.budgets.store import BudgetStore, StoreUnavailable
from gateway.errors import BudgetExceeded, BudgetStoreUnavailable
from gateway.policy.compiled import CompiledPolicy, CompiledRoute

__all__ = ["Budgets", "Spend", "refundable"]

log = logging.getLogger("spangate")


@dataclass
class Spend:
    """What a call spent: its budgets' usage after the check (and after its rows or a refund),
    its counters and the store's time that chose their windows (``at``). ``used`` changes
    through ``update`` alone (it keeps ``headers`` true). ``policy_field``: the limits'
    ``RateLimit-Policy`` field when the caller kept it (``core.policy_field``)."""

    used: list[Usage] = field(default_factory=list)
    counters: list[Counter] = field(default_factory=list)
    at: float = 0.0
    refunded: set[str] = field(default_factory=set)  # the kinds given back
    policy_field: str | None = field(default=None, repr=False, compare=False)
    _headers: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def headers(self) -> Mapping[str, str]:
        """The RateLimit header fields of ``used`` (``core.rate_headers``): computed once, and
        again only after ``update`` changed a usage they show. One mapping: read it, never
        change it."""
        if self._headers is None:
            self._headers = rate_headers(self.used, self.policy_field)
        return self._headers

    def update(self, k: int, usage: Usage) -> None:
        """``used[k] = usage``."""
        self.used[k] = usage
        if usage.limit.kind in HEADER_KINDS:  # rows are not shown: headers stand
            self._headers = None


def refundable(*, looked_up: bool, statement: bool) -> frozenset[str]:
    """The kinds a call gets back, by what it sent to Spanner: none once its statement was sent;
    ``writes`` when only its Idempotency-Key lookup was (no DML ran; the read-write transaction
    that read the key is paid for); ``calls`` and ``writes`` when nothing was. Pure."""
    if statement:
        return frozenset()
    if looked_up:
        return frozenset({"writes"})
    return frozenset({"calls", "writes"})


class Budgets:
    """The policy's budgets against a store; ``refusals`` counts 429s per (role, kind).

    ``clock``: this replica's clock, which the in-process store counts windows by (a shared store
    uses its own). ``key``: the key of principal hashes in store keys (``derive_hash_key``); None
    hashes them unkeyed (``keyed`` is False, and ``/readyz`` warns when the store is Redis)."""

    def __init__(
        self,
        store: BudgetStore,
        *,
        clock: Callable[[], float] = time.time,
        key: bytes | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._key = key
        self._memo = ChargeMemo(key)  # limits and counters per (policy, roles, principal)
        self.refusals: Tally[tuple[str, str]] = Tally()

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def limits(
        self, policy: CompiledPolicy, route: CompiledRoute, roles: frozenset[str], who: Principal
    ) -> tuple[Limit, ...]:
        """The limits a call spends (``core.applicable``), remembered (``memo``)."""
        charge = self._memo.charge(policy, route, roles, who)
        return () if charge is None else charge.limits

    async def spend(
        self,
        policy: CompiledPolicy,
        route: CompiledRoute,
        roles: frozenset[str],
        who: Principal,
        *,
        counted: bool = True,
    ) -> Spend | None:
        """Spend a call (and a write) or refuse it: 429 budget-exceeded, or 503
        budget-store-unavailable when the store does not answer. None: no budget applies.
        ``counted=False``: a 429 is not counted in ``refusals`` (the caller may answer the call
        otherwise, and counts it with ``note_refusal`` when it does not)."""
        charge = self._memo.charge(policy, route, roles, who)
        if charge is None:
            return None
        limits, wanted = charge.limits, charge.counters
        try:
            taken = await self.store.take(wanted, self._clock())
        except StoreUnavailable as exc:
            log.warning("budget store unavailable: %s", exc)
            raise BudgetStoreUnavailable(
                "the budget store did not answer; the statement did not run"
            ) from None
        used = usages_of(limits, taken.values, taken.now)
        if taken.ok:
            return Spend(used, list(wanted), taken.now, policy_field=charge.policy_field)
        spent = next(u for u in used if u.spent)
        retry = max(u.reset for u in used if u.spent)
        refusal = BudgetExceeded(
            f"the {spent.limit.kind} budget of role '{spent.limit.role}' "
            f"({spent.limit.text}) is spent; retry in {retry} s",
            headers={"Retry-After": str(retry), **rate_headers(used, charge.policy_field)},
            extra={
                "budget": spent.limit.kind,
                "role": spent.limit.role,
                "limit": spent.limit.text,
                "retry_after": retry,
            },
        )
        if counted:
            self.note_refusal(refusal)
        raise refusal

    def note_refusal(self, refusal: BudgetExceeded) -> None:
        """Count a 429 answered (``spangate_budget_refusals_total``)."""
        self.refusals[(str(refusal.extra["role"]), str(refusal.extra["budget"]))] += 1

    async def refund(self, spend: Spend, kinds: Collection[str] = ("calls", "writes")) -> None:
        """Give back what ``spend`` took of ``kinds`` (see ``refundable``), each kind once, to the
        windows it was taken in. A store that fails here is logged: the call's answer stands,
        and its spend with it."""
        picked = [
            k
            for k, (usage, counter) in enumerate(zip(spend.used, spend.counters, strict=True))
            if usage.limit.kind in kinds
            and usage.limit.kind not in spend.refunded
            and counter.cost > 0
        ]
        spend.refunded.update(spend.used[k].limit.kind for k in picked)
        if not picked:
            return
        try:
            values = await self.store.refund([spend.counters[k] for k in picked], spend.at)
        except StoreUnavailable as exc:
            log.warning("budget store unavailable, a call's spend not given back: %s", exc)
            return
        for k, value in zip(picked, values, strict=True):
            spend.update(k, usages_of([spend.used[k].limit], [value], spend.at)[0])

    async def give_back(
        self, spend: Spend, *, looked_up: bool, statement: bool, request: str = ""
    ) -> None:
        """Refund what a call never used, by what it sent to Spanner (``refundable``). Never
        raises: the call's own answer (or error) stands whatever the store does (logged)."""
        try:
            await self.refund(spend, refundable(looked_up=looked_up, statement=statement))
        except Exception:
            log.exception("giving back the budget of request %s failed", request)

    async def count_rows(self, spend: Spend, rows: int) -> None:
        """Add a read's rows to its ``rows`` budget (it answers anyway; the next call may not).
        A store that fails here is logged: the rows were read and are answered."""
        for k, (usage, counter) in enumerate(zip(spend.used, spend.counters, strict=True)):
            if usage.limit.kind != "rows" or rows <= 0:
                continue
            try:
                value, now = await self.store.add(counter, rows, self._clock())
            except StoreUnavailable as exc:
                log.warning("budget store unavailable, %d rows not counted: %s", rows, exc)
                continue
            spend.update(k, usages_of([usage.limit], [value], now)[0])
