"""A regular expression matching exactly the decimal integers of a range (pure).

The OpenAPI document describes an INT64 parameter as a JSON integer or a decimal string; a
``minimum``/``maximum`` only bounds the integer form, so the string form gets this pattern.
The classic construction: split ``[lo, hi]`` into runs whose numbers share a prefix and differ in
trailing digit ranges (``[lo-hi]`` per digit, ``[0-9]`` runs), one alternative per run. Positive
numbers may carry a ``+`` and leading zeros, as the parser accepts; ``-0`` is not generated.
"""

from __future__ import annotations

__all__ = ["int_range_pattern"]


def _nines(n: int, k: int) -> int:
    text = str(n)
    return int(text[:-k] + "9" * k) if k < len(text) else int("9" * k)


def _zeros(n: int, k: int) -> int:
    return n - n % int(10**k)


def _stops(lo: int, hi: int) -> list[int]:
    stops = {hi}
    k = 1
    stop = _nines(lo, k)
    while lo <= stop < hi:
        stops.add(stop)
        k += 1
        stop = _nines(lo, k)
    k = 1
    stop = _zeros(hi + 1, k) - 1
    while lo < stop <= hi:
        stops.add(stop)
        k += 1
        stop = _zeros(hi + 1, k) - 1
    return sorted(stops)


def _same_length(start: int, stop: int) -> str:
    out = ""
    free = 0
    for a, b in zip(str(start), str(stop), strict=True):
        if a == b:
            out += a
        elif (a, b) == ("0", "9"):
            free += 1
        else:
            out += f"[{a}-{b}]"
    if free:
        out += "[0-9]" + (f"{{{free}}}" if free > 1 else "")
    return out


def _non_negative(lo: int, hi: int) -> list[str]:
    parts = []
    start = lo
    for stop in _stops(lo, hi):
        parts.append(_same_length(start, stop))
        start = stop + 1
    return parts


def int_range_pattern(lo: int, hi: int) -> str:
    """``^...$`` matching the decimal numbers ``lo..hi`` (inclusive; ``lo <= hi``)."""
    if lo > hi:
        raise ValueError(f"empty range {lo}..{hi}")
    alternatives = []
    if hi >= 0:
        positive = _non_negative(max(lo, 0), hi)
        alternatives.append(r"\+?0*(?:" + "|".join(positive) + ")")
    if lo < 0:
        negative = _non_negative(max(1, -hi), -lo)
        alternatives.append("-0*(?:" + "|".join(negative) + ")")
    return "^(?:" + "|".join(alternatives) + ")$"
