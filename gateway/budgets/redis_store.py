"""Counters in Redis (``SPANGATE_REDIS_URL``): every replica spends one shared budget.

Each check is one round trip: a Lua script reads Redis's own clock (``TIME``), picks each
counter's window by it, reads the counters and, when none is spent, adds to each and sets its
expiry (a counter disappears on its own once its window is over), all atomically. Windows come
from Redis's clock, never a replica's: replicas whose clocks disagree still share each window.
(A key is its declared name plus its window's index: the scripts touch keys they were not handed
whole, which a single Redis allows; Redis Cluster is not supported, see the README.) Every Redis
call has a deadline (``SPANGATE_REDIS_TIMEOUT_SECONDS``) and is not retried: a Redis that does
not answer in time refuses the call (503 budget-store-unavailable). The outcome of every call
(and of ``/readyz``'s probe) is kept for ``state()``.

Redis 5.0 or later: the scripts read ``TIME`` and then write, which needs script effects
replication (the default from 5.0; before it a script had to ask for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.budgets.core import Counter, window_key
from gateway.budgets.store import StoreState, StoreUnavailable, Taken

__all__ = ["RedisStore"]

# KEYS: the counters' names; ARGV: limit, cost, window (s) per counter.
# Answers {taken, TIME seconds, TIME microseconds, value...}. Windows by whole seconds, as
# gateway.budgets.core.window computes them.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local n = #KEYS
local keys, values, ttls = {}, {}, {}
local taken = 1
for i = 1, n do
  local w = tonumber(ARGV[3 * i])
  local index = math.floor(now / w)
  keys[i] = KEYS[i] .. ':' .. string.format('%d', index)
  ttls[i] = (index + 1) * w - now + 1
  local v = tonumber(redis.call('GET', keys[i]) or '0')
  values[i] = v
  if v >= tonumber(ARGV[3 * i - 2]) then taken = 0 end
end
if taken == 1 then
  for i = 1, n do
    local cost = tonumber(ARGV[3 * i - 1])
    if cost > 0 then
      values[i] = redis.call('INCRBY', keys[i], cost)
      redis.call('EXPIRE', keys[i], ttls[i])
    end
  end
end
local out = {taken, t[1], t[2]}
for i = 1, n do out[i + 3] = values[i] end
return out
"""

# KEYS[1]: the counter's name; ARGV: amount, window (s). Answers {value, TIME s, TIME us}.
ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local w = tonumber(ARGV[2])
local index = math.floor(now / w)
local key = KEYS[1] .. ':' .. string.format('%d', index)
local v = redis.call('INCRBY', key, ARGV[1])
redis.call('EXPIRE', key, (index + 1) * w - now + 1)
return {v, t[1], t[2]}
"""

# KEYS: the counters' keys in the window they were taken in; ARGV: cost per key. A counter that
# expired stays gone (DECRBY would create it); none goes below 0. DECRBY keeps the expiry.
# Answers the values after.
REFUND = """
local out = {}
for i = 1, #KEYS do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local cost = tonumber(ARGV[i])
  if v > 0 and cost > 0 then
    v = redis.call('DECRBY', KEYS[i], math.min(v, cost))
  end
  out[i] = v
end
return out
"""


def _now(seconds: Any, micros: Any) -> float:
    return int(seconds) + int(micros) / 1_000_000


class RedisStore:
    """``probe_every``: ``/readyz`` asks Redis (PING) at most this often, by ``clock``."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        probe_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._timeout = timeout
        self._redis: Any = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._take = self._redis.register_script(TAKE)
        self._add = self._redis.register_script(ADD)
        self._refund = self._redis.register_script(REFUND)
        self._reachable: bool | None = None
        self._last_error: str | None = None
        self._probe_every = probe_every
        self._clock = clock
        self._probed_at: float | None = None
        self._probing: asyncio.Future[None] | None = None

    async def _call(self, call: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                answer = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._reachable = False
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise StoreUnavailable(self._last_error) from exc
        self._reachable, self._last_error = True, None
        return answer

    async def _run(self, script: Any, keys: list[str], args: list[int]) -> Any:
        return await self._call(lambda: script(keys=keys, args=args))

    async def take(self, counters: Sequence[Counter], now: float) -> Taken:
        """``now`` (this replica's clock) is not used: Redis's ``TIME`` picks the windows."""
        args: list[int] = []
        for c in counters:
            args += [c.limit, c.cost, c.window]
        answer = await self._run(self._take, [c.key for c in counters], args)
        return Taken(
            bool(int(answer[0])), [int(v) for v in answer[3:]], _now(answer[1], answer[2])
        )

    async def add(self, counter: Counter, amount: int, now: float) -> tuple[int, float]:
        answer = await self._run(self._add, [counter.key], [amount, counter.window])
        return int(answer[0]), _now(answer[1], answer[2])

    async def refund(self, counters: Sequence[Counter], at: float) -> list[int]:
        keys = [window_key(c, at) for c in counters]
        answer = await self._run(self._refund, keys, [c.cost for c in counters])
        return [int(v) for v in answer]

    async def probe(self) -> None:
        """One PING for ``/readyz`` (its outcome goes to ``state()``), at most once every
        ``probe_every`` seconds and one at a time: a probe while one is in flight waits for it,
        one soon after reads what it found. A flood of ``/readyz`` against a Redis that hangs
        thus holds one connection, never the pool the budget checks draw from. Never raises."""
        if self._probing is None:
            now = self._clock()
            if self._probed_at is not None and now - self._probed_at < self._probe_every:
                return
            self._probed_at = now
            self._probing = asyncio.ensure_future(self._ping())
        await asyncio.shield(self._probing)  # a caller that gives up leaves it to the others

    async def _ping(self) -> None:
        try:
            await self._call(self._redis.ping)
        except StoreUnavailable:
            pass  # in state()
        finally:
            self._probing = None

    def state(self) -> StoreState:
        return StoreState("redis", self._reachable, self._last_error)

    async def aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        await self._redis.aclose()
