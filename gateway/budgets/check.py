"""The budget check of ``Gateway._run``: spend before the statement, count rows after."""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.auth.principal import Principal
from gateway.budgets.core import Limit, Usage, applicable, counters, rate_headers
from gateway.budgets.core import usages as usages_of
from gateway.budgets.store import BudgetStore, StoreUnavailable
from gateway.errors import BudgetExceeded, BudgetStoreUnavailable
from gateway.policy.compiled import CompiledPolicy, CompiledRoute

__all__ = ["Budgets", "Spend"]

log = logging.getLogger("spangate")


@dataclass
class Spend:
    """What a call spent: its budgets' usage after the check (and after its rows)."""

    used: list[Usage] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return rate_headers(self.used)


class Budgets:
    """The policy's budgets against a store; ``refusals`` counts 429s per (role, kind)."""

    def __init__(self, store: BudgetStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self.refusals: Tally[tuple[str, str]] = Tally()

    def limits(
        self, policy: CompiledPolicy, route: CompiledRoute, roles: frozenset[str], who: Principal
    ) -> tuple[Limit, ...]:
        allowing = [r for r in route.model.allow if r in roles]
        return applicable(policy.model.budgets, allowing, who, write=route.query.is_dml)

    async def spend(
        self, policy: CompiledPolicy, route: CompiledRoute, roles: frozenset[str], who: Principal
    ) -> Spend | None:
        """Spend a call (and a write) or refuse it: 429 budget-exceeded, or 503
        budget-store-unavailable when the store does not answer. None: no budget applies."""
        limits = self.limits(policy, route, roles, who)
        if not limits:
            return None
        now = self._clock()
        try:
            taken, values = await self.store.take(counters(limits, now))
        except StoreUnavailable as exc:
            log.warning("budget store unavailable: %s", exc)
            raise BudgetStoreUnavailable(
                "the budget store did not answer; the statement did not run"
            ) from None
        used = usages_of(limits, values, now)
        if taken:
            return Spend(used)
        spent = next(u for u in used if u.spent)
        self.refusals[(spent.limit.role, spent.limit.kind)] += 1
        retry = max(u.reset for u in used if u.spent)
        raise BudgetExceeded(
            f"the {spent.limit.kind} budget of role '{spent.limit.role}' "
            f"({spent.limit.text}) is spent; retry in {retry} s",
            headers={"Retry-After": str(retry), **rate_headers(used)},
            extra={
                "budget": spent.limit.kind,
                "role": spent.limit.role,
                "limit": spent.limit.text,
                "retry_after": retry,
            },
        )

    async def count_rows(self, spend: Spend, rows: int) -> None:
        """Add a read's rows to its ``rows`` budget (it answers anyway; the next call may not).
        A store that fails here is logged: the rows were read and are answered."""
        now = self._clock()
        for k, usage in enumerate(spend.used):
            limit = usage.limit
            if limit.kind != "rows" or rows <= 0:
                continue
            counter = counters([limit], now)[0]
            try:
                value = await self.store.add(counter.key, rows, counter.ttl)
            except StoreUnavailable as exc:
                log.warning("budget store unavailable, %d rows not counted: %s", rows, exc)
                continue
            spend.used[k] = usages_of([limit], [value], now)[0]
