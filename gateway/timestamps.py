"""RFC 3339 timestamps in UTC with microseconds (``2026-12-02T15:50:49.123456Z``), as the audit
trail and the JSON log lines write them.

Every request writes two or three of them (the audit event's ``timestamp`` and
``requestAttributes.time``, the log line's ``time``); ``datetime.strftime`` costs ~5-10 µs each
under load, most of it formatting the date and time of day, which change once a second. So the
part up to the seconds is kept for the current second, and only the microseconds are formatted
per call. The text is the same as ``datetime.fromtimestamp(seconds, UTC).strftime(
"%Y-%m-%dT%H:%M:%S.%fZ")``, rounding included (tested against it).
"""

from __future__ import annotations

import math
import time

__all__ = ["rfc3339_utc", "utc_now"]

_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def rfc3339_utc(seconds: float) -> str:
    """``seconds`` since the epoch (``time.time()``) as RFC 3339 UTC with microseconds."""
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1e6)  # as datetime.fromtimestamp rounds (half even)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return _text(whole, micros)


def utc_now() -> str:
    """Now, as ``datetime.now(UTC)`` formats it (microseconds truncated from the clock's ns)."""
    whole, nanos = divmod(time.time_ns(), 1_000_000_000)
    return _text(whole, nanos // 1000)


def _text(whole: int, micros: int) -> str:
    global _second
    cached = _second  # one read: another thread may replace it meanwhile, never half of it
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{micros:06d}Z"
