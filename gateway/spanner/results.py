"""Spanner values -> JSON values, one representation per type (see ``gateway.policy.types``)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.spanner_v1.data_types import JsonObject

__all__ = ["to_json"]


def to_json(value: Any) -> Any:
    """One Spanner value (as the Python client returns it) -> a JSON-native value, losslessly."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, DatetimeWithNanoseconds):
        return str(value.rfc3339())  # type: ignore[no-untyped-call]
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("ascii")  # the client hands BYTES back as base64 text already
    if isinstance(value, JsonObject):
        # json.dumps of a JsonObject holding an array or scalar gives {}: serialize() is right.
        text = value.serialize()  # type: ignore[no-untyped-call]
        return None if text is None else json.loads(text)
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return str(value)
