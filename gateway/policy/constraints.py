"""Parameter constraints checked at load time: each must fit its parameter's type. Pure.

``min``/``max`` for INT64, FLOAT64, NUMERIC, DATE and TIMESTAMP (given as strings for DATE and
TIMESTAMP, finite for FLOAT64) and ``min <= max``; ``max_length`` for STRING (characters), BYTES
(bytes) and ARRAY (elements); ``pattern`` for STRING (RE2, the whole value must match, as binding
uses ``fullmatch``: ``regex.py``); ``enum`` for STRING and INT64, each value of the type, once,
and within the other constraints. On ``ARRAY<T>`` the element constraints (min, max, pattern,
enum) apply to each element, as binding applies them. A ``default`` must be of the type and
within the constraints, and null only when ``nullable``. Claim-bound parameters take no
``default`` and are not ``nullable`` (see ``validate.py``). In a PostgreSQL-dialect policy a
NUMERIC's min, max, enum and default are PG.NUMERIC values (its wider range; NaN only as a
default or enum value, never as min or max, and a NaN default is outside any min/max).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.policy.model import Param
from gateway.policy.regex import Regex, compile_regex
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect
from gateway.policy.types import ParamType, SpannerTimestamp, TypeProblem, coerce

__all__ = ["Finding", "Where", "param_findings"]

Where = tuple[str | int, ...]
Finding = tuple[Where, str]

_ORDERED = frozenset({"INT64", "FLOAT64", "NUMERIC", "DATE", "TIMESTAMP"})
_ENUMERABLE = frozenset({"STRING", "INT64"})
_SIZED = frozenset({"STRING", "BYTES"})
_Report = Callable[["str | Where", str], None]


def _show(value: Any) -> str:
    if isinstance(value, SpannerTimestamp):
        return value.rfc3339()
    return str(value)


def _order(value: Any) -> Any:
    return (value.value, value.nanos) if isinstance(value, SpannerTimestamp) else value


@dataclass
class _Limits:
    """The constraints of one parameter that fit its type, coerced to element values."""

    lo: Any = None
    hi: Any = None
    max_length: int | None = None
    pattern: Regex | None = None
    enum: list[Any] | None = None

    def element_problem(self, item: Any) -> str | None:
        if item is None:
            return None
        if (self.lo is not None or self.hi is not None) and item != item:
            return "is NaN, outside every range"  # NaN compares false with anything
        if self.lo is not None and _order(item) < _order(self.lo):
            return f"is below min {_show(self.lo)}"
        if self.hi is not None and _order(item) > _order(self.hi):
            return f"is above max {_show(self.hi)}"
        if self.pattern is not None and isinstance(item, str) and not self.pattern.fullmatch(item):
            return f"does not match pattern {self.pattern.pattern}"
        if self.enum is not None and item not in self.enum:
            return "is not one of enum"
        return None


def param_findings(where: Where, param: Param, dialect: Dialect = GOOGLESQL) -> list[Finding]:
    """Every problem of one parameter's constraints, at ``where`` (the parameter's path), its
    values read as ``dialect``'s (PostgreSQL: a NUMERIC is PG.NUMERIC)."""
    found: list[Finding] = []
    ptype = param.ptype
    if dialect == POSTGRESQL:
        ptype = replace(ptype, postgresql=True)
    kind = ptype.element if ptype.is_array and ptype.element else ptype.kind
    element = ParamType(kind, postgresql=ptype.postgresql)
    limits = _Limits()

    def bad(field: str | Where, message: str) -> None:
        found.append(((*where, *((field,) if isinstance(field, str) else field)), message))

    for field in ("min", "max"):
        raw = getattr(param, field)
        if raw is None:
            continue
        if kind not in _ORDERED:
            bad(field, f"{field} applies to INT64, FLOAT64, NUMERIC, DATE, TIMESTAMP, not {ptype}")
            continue
        try:
            value = coerce(element, raw, from_text=False)
        except TypeProblem as exc:
            bad(field, f"{field} {raw!r} is not a valid {kind}: {exc}")
            continue
        if (isinstance(value, float) and not math.isfinite(value)) or value != value:
            bad(field, f"{field} must be a finite number")
            continue
        setattr(limits, "lo" if field == "min" else "hi", value)
    if limits.lo is not None and limits.hi is not None and _order(limits.lo) > _order(limits.hi):
        bad("max", f"min {param.min!r} is greater than max {param.max!r}")
    if param.max_length is not None:
        if ptype.is_array or ptype.kind in _SIZED:
            limits.max_length = param.max_length
        else:
            bad("max_length", f"max_length applies to STRING, BYTES and ARRAY, not {ptype}")
    if param.pattern is not None:
        if kind == "STRING":
            limits.pattern = compile_regex(param.pattern)
        else:
            bad("pattern", f"pattern applies to STRING and ARRAY<STRING>, not {ptype}")
    if param.enum is not None:
        if kind not in _ENUMERABLE:
            bad("enum", f"enum applies to STRING and INT64 (or arrays of them), not {ptype}")
        else:
            limits.enum = _enum(param.enum, element, limits, ptype.is_array, bad)
    if param.claim is not None:
        if param.has_default:
            bad(
                "default",
                "a claim-bound parameter takes no default: its value comes from the "
                "token only, and a token without the claim is refused",
            )
        if param.nullable:
            bad(
                "nullable",
                "a claim-bound parameter cannot be nullable: a token without the claim is refused",
            )
    elif param.has_default and param.from_ is None:  # cursor and page size: pagination.py
        _default(param, ptype, limits, bad)
    return found


def _enum(
    values: Sequence[Any], element: ParamType, limits: _Limits, is_array: bool, bad: _Report
) -> list[Any]:
    coerced: list[Any] = []
    for k, raw in enumerate(values):
        try:
            value = coerce(element, raw, from_text=False)
        except TypeProblem as exc:
            bad(("enum", k), f"enum value {raw!r} is not a valid {element}: {exc}")
            continue
        if value in coerced:
            bad(("enum", k), f"enum lists {raw!r} twice")
            continue
        problem = limits.element_problem(value)
        if problem is None and not is_array and limits.max_length is not None:
            if len(value) > limits.max_length:
                problem = f"is longer than max_length {limits.max_length}"
        if problem is not None:
            bad(("enum", k), f"enum value {raw!r} {problem}, so it can never be accepted")
        coerced.append(value)
    return coerced


def _default(param: Param, ptype: ParamType, limits: _Limits, bad: _Report) -> None:
    raw = param.default
    if raw is None:
        if not param.nullable:
            bad("default", "default is null but the parameter is not nullable")
        return
    try:
        value = coerce(ptype, raw, from_text=False)
    except TypeProblem as exc:
        bad("default", f"default {raw!r} is not a valid {ptype}: {exc}")
        return
    if limits.max_length is not None and len(value) > limits.max_length:
        bad("default", f"default {raw!r} is longer than max_length {limits.max_length}")
        return
    for item in value if ptype.is_array else [value]:
        problem = limits.element_problem(item)
        if problem is not None:
            bad("default", f"default {raw!r} {problem}")
            return
