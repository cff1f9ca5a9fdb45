"""Strict JSON, the one reader of what callers send (request bodies, ``/mcp`` messages, a token's
header and claims): no member twice in an object (which one counts is every reader's guess), no
``NaN``/``Infinity`` literals, no number beyond a double's range (``1e400`` would read as
the Infinity the reader refuses as a literal), and no lone UTF-16 surrogate (``"\\ud800"``
parses, but no UTF-8 writer can write it: the audit trail, a log line, a terminal). Anything
else raises ``ValueError``. A leaf
module: it imports nothing of the gateway's."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads"]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (send NaN and Infinity as strings)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of a double's range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def loads(data: str | bytes) -> Any:
    """``json.loads``, strictly (see the module doc). Bytes are UTF-8, decoded strictly (never
    ``json.loads``'s own guess at UTF-16 or its ``surrogatepass``): a ``UnicodeDecodeError``,
    which is a ``ValueError``."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    value = json.loads(
        text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique_keys
    )
    if isinstance(data, bytes) and "\\u" not in text:
        return value  # strictly decoded UTF-8 holds no surrogate, and no escape made one
    try:  # a lone surrogate (from a \\u escape, or in a str) cannot be written as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    return value
