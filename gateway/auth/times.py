"""RFC 7519 NumericDate claims (``exp``, ``nbf``, ``iat``), in JWTs and introspection answers.

A NumericDate is a JSON number. JSON has no range limit, so an integer such as ``10**400`` parses
fine but has no float value: every time claim goes through ``numeric_date`` before anything
compares it or converts it, and a value that is not a finite number in float range (or is a
boolean, a string, NaN, Infinity) is the token's fault: ``token-malformed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.errors import AuthError

__all__ = ["check_times", "numeric_date", "time_claims"]


def numeric_date(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a usable NumericDate."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # OverflowError for an int beyond float range
    except OverflowError:
        return None
    return number if math.isfinite(number) else None  # NaN and Infinity: a token for ever


def time_claims(claims: Mapping[str, Any], *, require_exp: bool) -> dict[str, float]:
    """The present time claims as floats; AuthError ``token-malformed`` for one that is not a
    NumericDate (and for a missing ``exp`` when ``require_exp``)."""
    times: dict[str, float] = {}
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None and not (name == "exp" and require_exp):
            continue
        number = numeric_date(value)
        if number is None:
            raise AuthError(f"the token's {name} claim is not a number", code="token-malformed")
        times[name] = number
    return times


def check_times(
    claims: Mapping[str, Any], now: float, leeway: float, *, require_exp: bool = True
) -> dict[str, float]:
    """RFC 7519 times, as numbers only (no strings, no booleans): ``exp`` (required unless
    ``require_exp`` is false) must be after ``now - leeway``; ``nbf`` and ``iat``, when present,
    not after ``now + leeway``. Returns the time claims as floats."""
    times = time_claims(claims, require_exp=require_exp)
    if "exp" in times and times["exp"] <= now - leeway:
        raise AuthError("the token has expired", code="token-expired")
    for name in ("nbf", "iat"):
        if name in times and times[name] > now + leeway:
            raise AuthError(
                f"the token is not valid yet ({name} is in the future)", code="token-not-yet-valid"
            )
    return times
