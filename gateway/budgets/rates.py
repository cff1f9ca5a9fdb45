"""A budget's rate, as the policy writes it: ``60/min``, ``5000/hour``, ``100/day``. Pure."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["MAX_COUNT", "RATE_FORM", "RATE_PATTERN", "Rate", "parse_rate", "rate_of"]

_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86_400, "day": 86_400,
}  # fmt: skip
RATE_PATTERN = r"^\s*([0-9]+)\s*/\s*([0-9]*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$"
_RATE_RE = re.compile(RATE_PATTERN)
# What a rate that does not parse is told (here and by the policy loader, for the JSON Schema's
# pattern): the accepted form with examples, never the regular expression.
RATE_FORM = (
    "expected a rate such as 60/min, 5000/hour or 100/day: COUNT/UNIT with UNIT one of s, min, "
    "hour, day (also sec, second, m, minute, h, d), a number of units before it for a longer "
    "window (30/5min)"
)
MAX_WINDOW = 31 * 86_400
# The largest Integer an HTTP structured field may carry (RFC 9651 §3.3.1): a limit is sent as
# the RateLimit-Policy's ``q``. It is also exact in the Redis script's Lua numbers (doubles,
# exact up to 2^53) and far inside Redis's 64-bit counters.
MAX_COUNT = 999_999_999_999_999


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` per fixed window of ``window`` seconds."""

    limit: int
    window: int

    @property
    def per_second(self) -> float:
        return self.limit / self.window

    def __str__(self) -> str:
        return f"{self.limit}/{self.window}s"


def parse_rate(text: object) -> Rate:
    """``"60/min"`` -> Rate(60, 60); ``"5000/hour"``, ``"100/day"``, ``"10/s"``, ``"30/5m"``."""
    m = _RATE_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{RATE_FORM}; got {text!r}")
    limit = int(m.group(1))
    window = int(m.group(2) or 1) * _UNITS[m.group(3)]
    if limit < 1:
        raise ValueError(f"a rate allows at least 1, got {text!r}")
    if limit > MAX_COUNT:
        raise ValueError(
            f"a rate allows at most {MAX_COUNT:,} (the largest integer the RateLimit header "
            f"fields can carry), got {text!r}"
        )
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"a rate's window is 1 s to 31 days, got {text!r}")
    return Rate(limit, window)


@functools.lru_cache(maxsize=1024)
def rate_of(text: str) -> Rate:
    """``parse_rate`` remembered, for what reads a loaded policy's rates (``Budget.rate``): each
    text is parsed once, not per call. Safe to share: the answer depends on the text alone and a
    Rate is frozen. Bounded (least recently used out); a text that does not parse raises each
    time (an exception is not remembered)."""
    return parse_rate(text)
