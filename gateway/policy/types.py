"""Parameter types: parse a policy's type names and turn caller values into typed Python values.

Pure: no Spanner import. One JSON representation per type, both ways (documented in docs/api/types.md):

    BOOL       true/false                      ("true"/"false" in a query string)
    INT64      JSON integer, or a decimal string (exact beyond 2^53)
    FLOAT64    JSON number, or "NaN", "Infinity", "-Infinity"
    NUMERIC    decimal string (a JSON number is accepted when it is an integer)
    STRING     string
    BYTES      base64 string (standard alphabet, padded)
    DATE       "YYYY-MM-DD"
    TIMESTAMP  RFC 3339 with an offset or Z, up to nanoseconds
    JSON       any JSON value
    ARRAY<T>   JSON array of T (repeated keys in a query string); elements may be null

A policy may spell them as the PostgreSQL dialect does (``PG_NAMES``: int8/bigint, float8,
numeric, varchar/text, bytea, date, timestamptz, jsonb, bool, and ``T[]`` arrays); each is the
same type of the gateway. In a PostgreSQL-dialect policy (``ParamType.postgresql``) a NUMERIC
takes what PG.NUMERIC takes: NaN, up to 131072 digits before the point and 16383 after; and a
JSON value is PG.JSONB's, which holds no U+0000 in a string or a key (Spanner refuses it with
FAILED_PRECONDITION: the gateway refuses it first, naming the parameter).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PG_NAMES",
    "SCALAR_KINDS",
    "ParamType",
    "TypeProblem",
    "coerce",
    "json_value",
    "parse_type",
    "parse_timestamp",
    "same_value",
]

SCALAR_KINDS = frozenset(
    {"BOOL", "INT64", "FLOAT64", "NUMERIC", "STRING", "BYTES", "DATE", "TIMESTAMP", "JSON"}
)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# NUMERIC: precision 38, scale 9.
_NUMERIC_MAX = decimal.Decimal("99999999999999999999999999999.999999999")
_PG_PRECISION = 131072  # PG.NUMERIC: digits before the point
_PG_SCALE = 16383  # and after it

_TYPE_RE = re.compile(
    r"^\s*ARRAY\s*<\s*([A-Z0-9_ ]+?)\s*>\s*$|^\s*([A-Z0-9_ ]+?)\s*(\[\s*\])?\s*$"
)
# Spanner's PostgreSQL-dialect names of the same types (the policy's types are the gateway's;
# each binds as its dialect's counterpart: NUMERIC as PG.NUMERIC, JSON as PG.JSONB).
PG_NAMES: dict[str, str] = {
    "BOOL": "BOOL",
    "BOOLEAN": "BOOL",
    "INT8": "INT64",
    "BIGINT": "INT64",
    "FLOAT8": "FLOAT64",
    "DOUBLE PRECISION": "FLOAT64",
    "NUMERIC": "NUMERIC",
    "DECIMAL": "NUMERIC",
    "VARCHAR": "STRING",
    "CHARACTER VARYING": "STRING",
    "TEXT": "STRING",
    "BYTEA": "BYTES",
    "DATE": "DATE",
    "TIMESTAMPTZ": "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    "JSONB": "JSON",
}
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_DATE_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_TS_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


class TypeProblem(ValueError):
    """A value does not fit its declared type or constraint (the message says why)."""


@dataclass(frozen=True)
class ParamType:
    kind: str  # one of SCALAR_KINDS or "ARRAY"
    element: str | None = None  # the element kind of an ARRAY
    # A PostgreSQL-dialect policy's type: NUMERIC (or its elements) as PG.NUMERIC (a wider range
    # and NaN), JSON as PG.JSONB (no U+0000); the same type otherwise (``str``, equality).
    postgresql: bool = field(default=False, compare=False)

    @property
    def is_array(self) -> bool:
        return self.kind == "ARRAY"

    def __str__(self) -> str:
        return f"ARRAY<{self.element}>" if self.is_array else self.kind


def _kind(name: str) -> str:
    """A type name, or its PostgreSQL-dialect spelling, as the gateway's kind (else as given)."""
    name = " ".join(name.split())
    return name if name in SCALAR_KINDS else PG_NAMES.get(name, name)


def parse_type(text: str) -> ParamType:
    """``"STRING"``, ``"ARRAY<INT64>"``, or the PostgreSQL-dialect spellings (``"varchar"``,
    ``"int8[]"``, ``"ARRAY<jsonb>"``: ``PG_NAMES``) -> ParamType; ValueError names what is
    allowed."""
    m = _TYPE_RE.match(text.upper()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"unknown type {text!r}; expected one of {_allowed()}")
    element, scalar = m.group(1), m.group(2)
    if scalar is not None and m.group(3) is not None:
        element, scalar = scalar, None  # int8[]
    element = _kind(element) if element is not None else None
    scalar = _kind(scalar) if scalar is not None else None
    if element is not None:
        if element not in SCALAR_KINDS:
            raise ValueError(f"unknown array element type {element!r}; expected {_allowed()}")
        return ParamType("ARRAY", element)
    assert scalar is not None
    if scalar not in SCALAR_KINDS:
        raise ValueError(f"unknown type {text!r}; expected one of {_allowed()}")
    return ParamType(scalar)


def _allowed() -> str:
    return (
        ", ".join(sorted(SCALAR_KINDS))
        + " or ARRAY<...> (or their PostgreSQL-dialect names: "
        + ", ".join(n.lower() for n in PG_NAMES)
        + ", and T[])"
    )


@dataclass(frozen=True)
class SpannerTimestamp:
    """A UTC instant with nanoseconds (datetime alone stops at microseconds)."""

    value: dt.datetime  # aware, UTC, microseconds truncated from nanos
    nanos: int  # 0..999_999_999, the full fraction of the second

    def rfc3339(self) -> str:
        base = self.value.strftime("%Y-%m-%dT%H:%M:%S")
        if self.nanos:
            return f"{base}.{self.nanos:09d}".rstrip("0") + "Z"
        return base + "Z"


def parse_timestamp(text: str) -> SpannerTimestamp:
    m = _TS_RE.match(text)
    if m is None:
        raise TypeProblem("expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "").ljust(9, "0")
    nanos = int(frac) if frac else 0
    zone = m.group(8)
    try:
        if zone in ("Z", "z"):
            tz = dt.UTC
        else:
            sign = 1 if zone[0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        moment = dt.datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=tz)
        return SpannerTimestamp(moment.astimezone(dt.UTC), nanos)
    except (ValueError, OverflowError) as exc:  # bad fields, offsets of 24 h+, years past 0001..9999
        raise TypeProblem(f"invalid timestamp: {exc}") from None


def coerce(ptype: ParamType, raw: Any, *, from_text: bool) -> Any:
    """Turn a caller's value into the Python value bound for Spanner.

    ``from_text`` is true for path and query-string values (always strings, or a list of strings
    for arrays). Raises TypeProblem with a message fit for the caller. ``None`` passes through
    (nullability is the caller's check).
    """
    if raw is None:
        return None
    postgresql = ptype.postgresql
    if ptype.is_array:
        if not isinstance(raw, list):
            if from_text:
                raw = [raw]
            else:
                raise TypeProblem(f"expected a JSON array of {ptype.element}")
        assert ptype.element is not None
        element = ParamType(ptype.element)
        out = []
        for i, item in enumerate(raw):
            try:
                out.append(
                    None if item is None else _scalar(element.kind, item, from_text, postgresql)
                )
            except TypeProblem as exc:
                raise TypeProblem(f"element {i}: {exc}") from None
        return out
    if isinstance(raw, list) and not (ptype.kind == "JSON" and not from_text):  # [..] is JSON
        raise TypeProblem(f"expected a single {ptype.kind} value, got several")
    return _scalar(ptype.kind, raw, from_text, postgresql)


def _scalar(kind: str, raw: Any, from_text: bool, postgresql: bool = False) -> Any:
    if kind == "STRING":
        if not isinstance(raw, str):
            raise TypeProblem("expected a string")
        return raw
    if kind == "INT64":
        if isinstance(raw, bool):
            raise TypeProblem("expected an integer")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and _INT_RE.match(raw.strip()):
            if len(raw.strip().lstrip("+-").lstrip("0")) > 19:  # before int(): no 4300-digit work
                raise TypeProblem("integer out of the INT64 range")
            value = int(raw.strip())
        elif isinstance(raw, float) and raw.is_integer() and abs(raw) < 2**53:
            value = int(raw)
        else:
            raise TypeProblem("expected an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise TypeProblem("integer out of the INT64 range")
        return value
    if kind == "BOOL":
        if isinstance(raw, bool):
            return raw
        if from_text and isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise TypeProblem("expected true or false")
    if kind == "FLOAT64":
        if isinstance(raw, bool):
            raise TypeProblem("expected a number")
        if isinstance(raw, int | float):
            try:
                return float(raw)
            except OverflowError:
                raise TypeProblem("number out of the FLOAT64 range") from None
        if isinstance(raw, str):
            special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
            if raw in special:
                return special[raw]
            if from_text:
                try:
                    number = float(raw)
                except ValueError:
                    pass
                else:
                    if math.isfinite(number):
                        return number
        raise TypeProblem('expected a number, or "NaN", "Infinity", "-Infinity"')
    if kind == "NUMERIC":
        if isinstance(raw, bool):
            raise TypeProblem("expected a decimal string")
        if isinstance(raw, int):
            dec = decimal.Decimal(raw)
        elif isinstance(raw, str):
            try:
                dec = decimal.Decimal(raw.strip())
            except decimal.InvalidOperation:
                raise TypeProblem('expected a decimal string such as "12.50"') from None
        else:
            raise TypeProblem('expected a decimal string such as "12.50" (floats lose precision)')
        if postgresql:
            return _pg_numeric(dec)
        if not dec.is_finite() or dec.copy_abs() > _NUMERIC_MAX:
            raise TypeProblem("NUMERIC out of range (38 digits, 9 after the point)")
        exponent = dec.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -9:
            raise TypeProblem("NUMERIC allows at most 9 digits after the point")
        return dec
    if kind == "BYTES":
        if not isinstance(raw, str):
            raise TypeProblem("expected a base64 string")
        try:
            return base64.b64decode(raw.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise TypeProblem("expected a base64 string") from None
    if kind == "DATE":
        if not isinstance(raw, str) or not _DATE_RE.match(raw):
            raise TypeProblem("expected a date YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(raw)
        except ValueError as exc:
            raise TypeProblem(f"invalid date: {exc}") from None
    if kind == "TIMESTAMP":
        if not isinstance(raw, str):
            raise TypeProblem("expected an RFC 3339 timestamp string")
        return parse_timestamp(raw)
    if kind == "JSON":
        value = raw
        if from_text:
            import json

            try:
                value = json.loads(raw)
                json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogates
            except (ValueError, RecursionError, UnicodeError):
                raise TypeProblem("expected a JSON document") from None
        if postgresql and _holds_nul(value):
            raise TypeProblem(
                "a PostgreSQL jsonb value cannot hold the character U+0000 (\\u0000) in a string "
                "or a key"
            )
        return value
    raise TypeProblem(f"unsupported type {kind}")  # pragma: no cover - parse_type guards this


def _holds_nul(value: Any) -> bool:
    """Whether a JSON value holds U+0000 in a string or an object key (walked without
    recursion: a body may nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, inner in item.items():
                if "\x00" in str(key):
                    return True
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _pg_numeric(dec: decimal.Decimal) -> decimal.Decimal:
    """PG.NUMERIC: NaN, or up to 131072 digits before the point and 16383 after."""
    if dec.is_nan():
        if dec.is_snan():
            raise TypeProblem('expected a decimal string such as "12.50", or "NaN"')
        return decimal.Decimal("NaN")
    if dec.is_infinite():
        raise TypeProblem("NUMERIC cannot be infinite (NaN is allowed)")
    _, digits, exponent = dec.as_tuple()
    assert isinstance(exponent, int)
    if -exponent > _PG_SCALE:
        raise TypeProblem(f"NUMERIC allows at most {_PG_SCALE} digits after the point")
    if len(digits) + exponent > _PG_PRECISION:
        raise TypeProblem(f"NUMERIC allows at most {_PG_PRECISION} digits before the point")
    return dec


def json_value(value: Any) -> Any:
    """A typed parameter value (as ``coerce`` returns it) -> its JSON representation above."""
    if isinstance(value, SpannerTimestamp):
        return value.rfc3339()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


def same_value(a: Any, b: Any) -> bool:
    """Equality of typed values, with NaN equal to NaN and ``True`` never equal to ``1``."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)
