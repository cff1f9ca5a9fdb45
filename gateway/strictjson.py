"""Strict JSON, the one reader of what callers send (request bodies, ``/mcp`` messages, a token's
header and claims): no member twice in an object (which one counts is every reader's guess), no
``NaN``/``Infinity`` literals, and no number beyond a double's range (``1e400`` would read as
the Infinity the reader refuses as a literal). Anything else raises ``ValueError``. A leaf
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
    """``json.loads``, strictly (see the module doc)."""
    return json.loads(
        data, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique_keys
    )
