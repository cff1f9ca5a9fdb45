"""How often the gateway may call an identity provider: a token bucket and a back-off.

Both are pure (the clock is injected) and per issuer. ``TokenBucket`` bounds the rate of calls
(``rate`` per second, up to ``burst`` at once after a quiet period); ``Backoff`` stops calls after
the IdP answered 429: for its ``Retry-After`` (capped), else for 1 s doubling per consecutive 429
up to ``max_seconds``; any other answer resets it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "TokenBucket", "retry_after_seconds"]


class TokenBucket:
    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """Take one call from the bucket: 0.0 when allowed, else the seconds until one is."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class Backoff:
    def __init__(
        self,
        *,
        initial_seconds: float = 1.0,
        max_seconds: float = 60.0,
        max_retry_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial = initial_seconds
        self._max = max_seconds
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._until = -math.inf
        self.consecutive = 0  # 429s in a row

    def remaining(self) -> float:
        """Seconds until calls may resume (0 when they may now)."""
        return max(0.0, self._until - self._clock())

    def throttled(self, retry_after: float | None) -> float:
        """The IdP answered 429: stop calling; returns how long."""
        self.consecutive += 1
        if retry_after is not None:
            delay = min(max(retry_after, self._initial), self._max_retry_after)
        else:
            delay = min(self._initial * 2 ** (self.consecutive - 1), self._max)
        self._until = self._clock() + delay
        return delay

    def answered(self) -> None:
        """The IdP answered something other than 429."""
        self.consecutive = 0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` (delta-seconds or an HTTP date) in seconds; None when absent or
    unreadable. ``now`` is the wall-clock time (for a date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value[:12]), 10**9))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
