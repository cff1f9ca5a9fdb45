"""Masking result values (pure): a JSON row value and its column's Spanner type in, the masked
value out. The rows are the gateway's JSON form of Spanner values (``spanner.results.to_json``).

Modes (``docs/masking.md``):

- ``null``: null, whatever the value (an array too);
- ``redact``: ``"***"`` for a STRING, null for any other type;
- ``last4``: a STRING of at least 8 characters (Unicode code points) answers ``"***"`` and its
  last four characters (``"***4242"``), a shorter one ``"***"``: never more than half of a value
  shows. The loader allows it on STRING columns only; any other value answers null;
- ``hash``: ``base64url(HMAC-SHA256(C, TYPE || 0x00 || canonical(value)))`` without padding (43
  characters), where ``TYPE`` is the scalar type's name in ASCII (``STRING``, ``INT64``...; empty
  when unknown) and ``C`` is the column's key (``MaskKey.for_mask``)::

      K = HMAC-SHA256(SPANGATE_MASK_KEY, "spangate mask v1")
      C = HMAC-SHA256(K, "column" || 0x00 || QUERY || 0x00 || COLUMN)   (no ``domain``)
      C = HMAC-SHA256(K, "domain" || 0x00 || DOMAIN)                    (``domain: DOMAIN``)

  (names in UTF-8). Equal values of one type hash equally within one query's column, or across
  the masks naming one domain, in every replica and restart with the same key; a route that
  hashes what its caller sent (``INSERT … THEN RETURN``) hashes with its own key, so it does not
  let a caller test guesses against another query's hashes unless they share a domain.

NULL stays NULL in every mode (a mask hides a value, not its absence; ``null`` hides both). An
ARRAY is masked element by element (its NULL elements stay NULL): ``["***", null]``.

Canonical bytes per type (what ``hash`` hashes, so others holding the key can reproduce it):

    STRING               its UTF-8 bytes, as stored (no normalisation)
    INT64                decimal digits, "-" for negatives, no leading zeros or "+"
    BOOL                 "true" / "false"
    FLOAT64, FLOAT32     ECMAScript Number::toString of the (64-bit) value, as RFC 8785 writes
                         numbers (1.5, 100, 1e-7, 1e+21; -0 is "0"); "NaN", "Infinity",
                         "-Infinity"
    NUMERIC              the decimal without exponent, trailing fractional zeros or a bare point
                         ("1.50" -> "1.5", "2.0" -> "2", "-0" -> "0")
    BYTES                the raw bytes (not their base64)
    DATE                 YYYY-MM-DD
    TIMESTAMP            RFC 3339 in UTC as the gateway answers it: "Z", the fraction to
                         nanoseconds without trailing zeros (2026-01-02T09:00:00.5Z)
    JSON (and any other) RFC 8785 canonical JSON of the value (keys sorted by UTF-16 code units,
                         no whitespace), except that integers keep all their digits

Masking never puts a value into an exception, a log line or an error: a value that cannot be
encoded raises ``MaskFailed`` naming only the mode and the type.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import decimal
import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.spanner.results import Result

__all__ = [
    "HASH_LENGTH",
    "LAST4_MIN_LENGTH",
    "REDACTED",
    "MaskFailed",
    "MaskKey",
    "canonical_bytes",
    "es_number",
    "expect_columns",
    "mask_result",
    "mask_value",
]

REDACTED = "***"
LAST4_MIN_LENGTH = 8  # shorter strings are masked whole: at most half of a value ever shows
HASH_LENGTH = 43  # base64url of 32 bytes, without padding
_DERIVATION = b"spangate mask v1"
_COLUMN = b"column\x00"
_DOMAIN = b"domain\x00"


class MaskFailed(Exception):
    """A value could not be masked (the answer is a 500; nothing of the rows is sent). Its
    message names the mode and the type, never the value."""


@dataclass(frozen=True)
class MaskKey:
    """A key of ``hash`` masks: ``from_secret`` derives the gateway's (``K``) from
    ``SPANGATE_MASK_KEY`` (never used directly, so the same secret used elsewhere does not give
    the same hashes); ``for_mask`` derives one column's or domain's from it (``C``), which is
    what values are hashed with."""

    key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> MaskKey:
        return cls(hmac.new(secret, _DERIVATION, hashlib.sha256).digest())

    def for_mask(self, query: str, column: str, domain: str | None = None) -> MaskKey:
        """The key of query ``query``'s column ``column``, or of ``domain`` when the mask
        names one (then the query and column do not matter)."""
        if domain is not None:
            label = _DOMAIN + domain.encode("utf-8")
        else:
            label = _COLUMN + query.encode("utf-8") + b"\x00" + column.encode("utf-8")
        return MaskKey(hmac.new(self.key, label, hashlib.sha256).digest())


def es_number(value: float) -> str:
    """ECMAScript ``Number::toString`` of a double (the number form of RFC 8785)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")  # repr: the shortest round trip
    whole, _, fraction = mantissa.partition(".")
    all_digits = whole + fraction
    digits = all_digits.lstrip("0")
    n = len(whole) + (int(exponent) if exponent else 0) - (len(all_digits) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = n - 1
        text = digits[0] + (f".{digits[1:]}" if k > 1 else "") + f"e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def _json(value: Any) -> str:
    """RFC 8785 canonical JSON, integers with all their digits."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a JSON number")
        return es_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_json(value[k])}" for k in keys) + "}"
    raise TypeError("not a JSON value")


def _numeric(text: str) -> str:
    with decimal.localcontext() as context:
        # normalize() rounds to the context's precision: as many digits as the text has, so it
        # never rounds (NUMERIC has 38 digits, PG_NUMERIC up to 147,455 + 16,383)
        context.prec = max(len(text), 1)
        number = decimal.Decimal(text)
        if number.is_nan():
            return "NaN"
        if number == 0:
            return "0"
        return format(number.normalize(), "f")


def _float(value: Any) -> str:
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return es_number(float(value))
    raise TypeError("not a float")


def canonical_bytes(type_name: str | None, value: Any) -> bytes:
    """The bytes ``hash`` hashes for a non-null scalar of ``type_name`` (see the module doc).
    Raises ValueError/TypeError when the value is not of that type's JSON form."""
    if type_name == "STRING" and isinstance(value, str):
        return value.encode("utf-8")
    if type_name == "INT64" and isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    if type_name == "BOOL" and isinstance(value, bool):
        return b"true" if value else b"false"
    if type_name in ("FLOAT64", "FLOAT32"):
        return _float(value).encode("ascii")
    if type_name in ("NUMERIC", "PG_NUMERIC") and isinstance(value, str):
        return _numeric(value).encode("ascii")
    if type_name == "BYTES" and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if type_name in ("DATE", "TIMESTAMP") and isinstance(value, str):
        return value.encode("ascii")
    if type_name in ("STRING", "INT64", "BOOL", "NUMERIC", "BYTES", "DATE", "TIMESTAMP"):
        raise TypeError("the value is not of its column's type")
    return _json(value).encode("utf-8")  # JSON, and any type this gateway does not know


def _hash(key: MaskKey, type_name: str | None, value: Any) -> str:
    message = (type_name or "").encode("ascii") + b"\x00" + canonical_bytes(type_name, value)
    digest = hmac.new(key.key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _scalar(mode: str, type_name: str | None, value: Any, key: MaskKey | None) -> Any:
    if value is None:
        return None
    is_string = type_name == "STRING" or (type_name is None and isinstance(value, str))
    if mode == "redact":
        return REDACTED if is_string else None
    if mode == "last4":
        if not is_string or not isinstance(value, str):
            return None
        return REDACTED + value[-4:] if len(value) >= LAST4_MIN_LENGTH else REDACTED
    if mode == "hash":
        if key is None:
            raise MaskFailed("a hash mask without SPANGATE_MASK_KEY")
        try:
            return _hash(key, type_name, value)
        except (ValueError, TypeError, decimal.DecimalException, binascii.Error):
            raise MaskFailed(f"a {type_name or 'value of unknown type'} could not be hashed") from None
    return None  # "null", and any mode this code does not know: nothing shows


def mask_value(mode: str, type_name: str | None, value: Any, key: MaskKey | None) -> Any:
    """One column value masked with ``mode`` (``type_name``: its Spanner type, ``ARRAY<…>``
    included; None when unknown, then judged from the JSON value)."""
    if mode == "null" or value is None:
        return None
    if type_name is not None and type_name.startswith("ARRAY<"):
        if not isinstance(value, list):
            return None  # not the array its type says: show nothing
        return [_scalar(mode, type_name[6:-1], v, key) for v in value]
    if type_name is None and isinstance(value, list):
        return [_scalar(mode, None, v, key) for v in value]
    return _scalar(mode, type_name, value, key)  # a JSON column's array is one value


def expect_columns(result: Result, columns: Sequence[tuple[str, str | None]]) -> None:
    """MaskFailed unless ``result`` has exactly the ``columns`` (name, Spanner type; a None type,
    or a result without types, compares the name alone) that the policy's analysis found: a
    view or the schema changed since, and the masks were judged on another shape."""
    names = [name for name, _ in columns]
    same = list(result.columns) == names
    if same and len(result.types) == len(result.columns):
        same = all(t is None or t == got for (_, t), got in zip(columns, result.types, strict=True))
    if not same:
        raise MaskFailed(
            f"the statement returned the columns {_shown(result.columns, result.types)}, but "
            f"the policy was analysed with {_shown(names, [t for _, t in columns])}: the schema "
            "or a view changed since; reload the policy (SIGHUP) to analyse it again"
        )


def _shown(names: Sequence[str], types: Sequence[str | None]) -> str:
    if len(types) != len(names):
        return ", ".join(names) or "(none)"
    return ", ".join(f"{n} {t}" if t else n for n, t in zip(names, types, strict=True)) or "(none)"


def mask_result(
    result: Result,
    masks: Mapping[str, str],
    types: Mapping[str, str | None],
    keys: Mapping[str, MaskKey],
) -> Result:
    """``result`` with the columns of ``masks`` (column -> mode) masked in every row; the rest
    of the result as it was. ``types``: each column's Spanner type; ``keys``: each ``hash``
    column's key (``MaskKey.for_mask``; one missing is MaskFailed).

    Fails closed: a masked column the result does not have (exactly: rows are keyed by the name)
    is MaskFailed, whether it is missing or there only in another case (``email`` for
    ``Email``), rows or no rows; the masks were judged on a statement that returned it."""
    for column in masks:
        if column not in result.columns:
            other = [c for c in result.columns if c.casefold() == column.casefold()]
            raise MaskFailed(
                f"the masked column {column} is not in the result"
                + (f" (only {', '.join(other)}, in another case)" if other else "")
                + f"; its columns: {', '.join(result.columns) or '(none)'}"
            )
    if not masks or not result.rows:
        return result
    rows = [
        {
            column: mask_value(masks[column], types.get(column), value, keys.get(column))
            if column in masks
            else value
            for column, value in row.items()
        }
        for row in result.rows
    ]
    return dataclasses.replace(result, rows=rows)
