"""The budget store: a ``Protocol`` and the in-process store (one replica needs nothing else)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.budgets.core import Counter

__all__ = ["BudgetStore", "MemoryStore", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store did not answer (in time): the call is refused, never let through unbudgeted."""


class BudgetStore(Protocol):
    async def take(self, counters: Sequence[Counter]) -> tuple[bool, list[int]]:
        """Atomically: when no counter holds its limit or more, add each one's cost and answer
        (True, the values after); else change nothing and answer (False, the current values)."""
        ...

    async def add(self, key: str, amount: int, ttl: int) -> int:
        """Add ``amount`` (rows read) to a counter; its value after."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Counters in this process (a dict; atomic because nothing here awaits). Expired counters
    are dropped as they are met and by a sweep every ``sweep_every`` updates."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, sweep_every: int = 4096):
        self._clock = clock
        self._values: dict[str, tuple[int, float]] = {}
        self._updates = 0
        self._sweep_every = sweep_every

    def _get(self, key: str, now: float) -> int:
        entry = self._values.get(key)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._values[key]
            return 0
        return entry[0]

    def _set(self, key: str, value: int, ttl: int, now: float) -> None:
        self._values[key] = (value, now + ttl)
        self._updates += 1
        if self._updates % self._sweep_every == 0:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}

    def __len__(self) -> int:
        return len(self._values)

    async def take(self, counters: Sequence[Counter]) -> tuple[bool, list[int]]:
        now = self._clock()
        values = [self._get(c.key, now) for c in counters]
        if any(v >= c.limit for v, c in zip(values, counters, strict=True)):
            return False, values
        out: list[int] = []
        for value, counter in zip(values, counters, strict=True):
            if counter.cost:
                value += counter.cost
                self._set(counter.key, value, counter.ttl, now)
            out.append(value)
        return True, out

    async def add(self, key: str, amount: int, ttl: int) -> int:
        now = self._clock()
        value = self._get(key, now) + amount
        self._set(key, value, ttl, now)
        return value

    async def aclose(self) -> None:
        return None
