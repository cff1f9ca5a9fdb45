"""Spanner values -> JSON values, one representation per type (see ``gateway.policy.types``), and
the result of one statement with the JSON body the gateway answers for it."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.spanner_v1.data_types import JsonObject

__all__ = ["Result", "response_body", "rfc3339", "to_json"]


@dataclass
class Result:
    """What one statement produced. ``replayed``: a write answered from its Idempotency-Key record
    (nothing ran again); ``commit_timestamp`` is then the first commit's. ``types``: each
    column's Spanner type as the statement returned it (``INT64``, ``ARRAY<STRING>``), kept for
    queries with column masks; empty otherwise, or when unknown (an Idempotency-Key record
    stored without them)."""

    columns: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    commit_timestamp: str | None = None
    is_dml: bool = False
    replayed: bool = False


def response_body(result: Result) -> dict[str, Any]:
    """The JSON body for a result. Reads: ``{rows, row_count, truncated}``. DML:
    ``{row_count, commit_timestamp}``, plus ``rows`` and ``truncated`` with THEN RETURN."""
    if result.is_dml and not result.columns:
        body: dict[str, Any] = {"row_count": result.row_count}
    else:
        body = {"rows": result.rows, "row_count": result.row_count, "truncated": result.truncated}
    if result.commit_timestamp is not None:
        body["commit_timestamp"] = result.commit_timestamp
    return body


def rfc3339(value: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` in UTC: four-digit years, the fraction up to
    nanoseconds without trailing zeros (``DatetimeWithNanoseconds.rfc3339()`` writes year 1 as
    ``1-01-01`` and pads microseconds)."""
    nanos = value.microsecond * 1000
    if isinstance(value, DatetimeWithNanoseconds) and value.nanosecond:
        nanos = value.nanosecond  # 0 unless built with nanoseconds: then microsecond holds it
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return text + "Z"


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
    if isinstance(value, dt.datetime):
        return rfc3339(value)
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
