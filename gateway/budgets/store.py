"""The budget store: a ``Protocol`` and the in-process store (one replica needs nothing else)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.budgets.core import Counter, window, window_key

__all__ = ["BudgetStore", "MemoryStore", "StoreState", "StoreUnavailable", "Taken"]


class StoreUnavailable(Exception):
    """The store did not answer (in time): the call is refused, never let through unbudgeted."""


@dataclass(frozen=True)
class Taken:
    """A check's answer: ``ok`` (each counter's cost was added) or not (nothing changed),
    the counters' ``values`` after it, and ``now``: the time by the store's clock that chose
    their windows (the windows a refund must give back to, and the source of ``reset``)."""

    ok: bool
    values: list[int]
    now: float


@dataclass(frozen=True)
class StoreState:
    """For ``/readyz`` (reported, not part of readiness): ``reachable`` is None until the store
    was first used or probed, then what its last call or probe found."""

    kind: Literal["memory", "redis"]
    reachable: bool | None
    last_error: str | None


class BudgetStore(Protocol):
    """Counters per window. ``now`` is this replica's clock; a store shared by replicas counts by
    its own clock instead, so that they agree on windows, and says which time it used."""

    async def take(self, counters: Sequence[Counter], now: float) -> Taken:
        """Atomically: when no counter holds its limit or more (in its window of the store's
        now), add each one's cost and answer ok with the values after; else change nothing."""
        ...

    async def add(self, counter: Counter, amount: int, now: float) -> tuple[int, float]:
        """Add ``amount`` (rows read) to a counter's current window: (its value after, the
        store's now)."""
        ...

    async def refund(self, counters: Sequence[Counter], at: float) -> list[int]:
        """Atomically take each counter's cost back from its window of ``at`` (a ``Taken.now``):
        never below 0, never creating a counter that has expired; the values after."""
        ...

    async def probe(self) -> None:
        """Ask the store whether it answers, for ``/readyz``: the answer is in ``state()``
        (a shared store asks at most about once a second, one probe at a time). Never raises."""
        ...

    def state(self) -> StoreState: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Counters in this process (a dict; atomic because nothing here awaits), by the replica's
    clock (``now`` as given). Expired counters are dropped as they are met and by a sweep every
    ``sweep_every`` updates."""

    def __init__(self, *, sweep_every: int = 4096) -> None:
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

    def _set(self, key: str, value: int, expires: float, now: float) -> None:
        self._values[key] = (value, expires)
        self._updates += 1
        if self._updates % self._sweep_every == 0:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def _expiry(counter: Counter, now: float) -> float:
        """A second past the end of the counter's window (as Redis's EXPIRE of reset + 1)."""
        return float(window(counter.window, now)[0] + 1) * counter.window + 1

    async def take(self, counters: Sequence[Counter], now: float) -> Taken:
        keys = [window_key(c, now) for c in counters]
        values = [self._get(k, now) for k in keys]
        if any(v >= c.limit for v, c in zip(values, counters, strict=True)):
            return Taken(False, values, now)
        out: list[int] = []
        for key, value, counter in zip(keys, values, counters, strict=True):
            if counter.cost:
                value += counter.cost
                self._set(key, value, self._expiry(counter, now), now)
            out.append(value)
        return Taken(True, out, now)

    async def add(self, counter: Counter, amount: int, now: float) -> tuple[int, float]:
        key = window_key(counter, now)
        value = self._get(key, now) + amount
        self._set(key, value, self._expiry(counter, now), now)
        return value, now

    async def refund(self, counters: Sequence[Counter], at: float) -> list[int]:
        out: list[int] = []
        for counter in counters:
            key = window_key(counter, at)
            entry = self._values.get(key)
            if entry is None or not counter.cost:
                out.append(entry[0] if entry is not None else 0)
                continue
            value = max(0, entry[0] - counter.cost)
            self._values[key] = (value, entry[1])
            out.append(value)
        return out

    async def probe(self) -> None:
        return None

    def state(self) -> StoreState:
        return StoreState("memory", True, None)

    async def aclose(self) -> None:
        return None
