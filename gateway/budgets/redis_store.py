"""Counters in Redis (``SPANGATE_REDIS_URL``): every replica spends one shared budget.

Each check is one round trip: a Lua script reads the call's counters and, when none is spent,
adds to each and sets its expiry (a counter disappears on its own once its window is over), all
atomically. Every Redis call has a deadline (``SPANGATE_REDIS_TIMEOUT_SECONDS``) and is not
retried: a Redis that does not answer in time refuses the call (503 budget-store-unavailable).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from gateway.budgets.core import Counter
from gateway.budgets.store import StoreUnavailable

__all__ = ["RedisStore"]

# KEYS: the counters; ARGV: limit, cost, ttl per counter. Answers {taken, value...}.
TAKE = """
local n = #KEYS
local values = {}
local taken = 1
for i = 1, n do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  values[i] = v
  if v >= tonumber(ARGV[3 * i - 2]) then taken = 0 end
end
if taken == 1 then
  for i = 1, n do
    local cost = tonumber(ARGV[3 * i - 1])
    if cost > 0 then
      values[i] = redis.call('INCRBY', KEYS[i], cost)
      redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
    end
  end
end
local out = {taken}
for i = 1, n do out[i + 1] = values[i] end
return out
"""

# KEYS[1]: the counter; ARGV: amount, ttl. Answers the value after.
ADD = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return v
"""


class RedisStore:
    def __init__(self, url: str, *, timeout: float) -> None:
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

    async def _run(self, script: Any, keys: list[str], args: list[int]) -> Any:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def take(self, counters: Sequence[Counter]) -> tuple[bool, list[int]]:
        args: list[int] = []
        for c in counters:
            args += [c.limit, c.cost, c.ttl]
        answer = await self._run(self._take, [c.key for c in counters], args)
        return bool(int(answer[0])), [int(v) for v in answer[1:]]

    async def add(self, key: str, amount: int, ttl: int) -> int:
        return int(await self._run(self._add, [key], [amount, ttl]))

    async def ping(self) -> None:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._redis.aclose()
