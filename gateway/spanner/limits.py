"""Spanner's limits, enforced before a statement is sent (pure).

- Request size: the statement text plus its parameters, as sent, must fit in
  ``MAX_REQUEST_BYTES`` (10 MiB, Spanner's largest cell and request); else 413
  ``request-too-large``. The gateway's own body limit (``SPANGATE_MAX_BODY_BYTES``, 1 MiB by
  default) usually refuses such a request earlier; this check holds when that limit is raised.
- Mutations per commit: at most ``MAX_MUTATIONS`` (80,000). An INSERT writes (rows x columns
  listed) cells; its rows are the VALUES tuples, or the length of the longest array parameter
  when it inserts from ``UNNEST(@array)``. A count that surely exceeds the limit is refused with
  422 ``too-many-mutations`` before anything is sent. This is a lower bound (secondary indexes
  add mutations, and UPDATE/DELETE counts are only known to Spanner): Spanner's own refusal of a
  larger commit maps to the same 422 (``gateway.spanner.errors``). The emulator does not enforce
  the limit, so this check is what keeps a development setup honest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import GatewayError, PayloadTooLarge
from gateway.policy.types import SpannerTimestamp

__all__ = [
    "MAX_MUTATIONS",
    "MAX_REQUEST_BYTES",
    "TooManyMutations",
    "check_limits",
    "estimate_bytes",
    "insert_cells_per_row",
]

MAX_MUTATIONS = 80_000
MAX_REQUEST_BYTES = 10 * 1024 * 1024

_INSERT = re.compile(
    r"^\s*(?:@\{[^}]*\}\s*)?INSERT\s+(?:OR\s+(?:IGNORE|UPDATE)\s+)?(?:INTO\s+)?"
    r"[`\"\w.]+\s*\(([^()]*)\)\s*(VALUES\b|SELECT\b)?",
    re.IGNORECASE,
)
_VALUES_TUPLE = re.compile(r"\)\s*,\s*\(")


class TooManyMutations(GatewayError):
    status = 422
    code = "too-many-mutations"
    title = "Unprocessable content"


def estimate_bytes(value: Any) -> int:
    """About how many bytes a bound parameter takes on the wire (never less)."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bytes):
        return (len(value) + 2) // 3 * 4  # sent as base64
    if isinstance(value, int | float):
        return 24
    if isinstance(value, SpannerTimestamp):
        return 32
    if isinstance(value, list | tuple):
        return 2 + sum(estimate_bytes(v) + 2 for v in value)
    if isinstance(value, Mapping):
        return 2 + sum(estimate_bytes(str(k)) + estimate_bytes(v) + 4 for k, v in value.items())
    return len(str(value).encode("utf-8"))


def insert_cells_per_row(sql: str) -> tuple[int, int] | None:
    """For an INSERT with a column list: (columns, VALUES tuples or 0 for INSERT ... SELECT);
    None for anything else."""
    m = _INSERT.match(sql)
    if m is None:
        return None
    columns = len([c for c in m.group(1).split(",") if c.strip()])
    if m.group(2) and m.group(2).upper() == "VALUES":
        tuples = 1 + len(_VALUES_TUPLE.findall(sql[m.end() :]))
        return columns, tuples
    return columns, 0


def check_limits(sql: str, values: Mapping[str, Any], *, is_dml: bool) -> None:
    """Raise 413 ``request-too-large`` or 422 ``too-many-mutations`` (see the module doc)."""
    size = len(sql.encode("utf-8")) + sum(
        estimate_bytes(k) + estimate_bytes(v) for k, v in values.items()
    )
    if size > MAX_REQUEST_BYTES:
        raise PayloadTooLarge(
            f"the statement and its parameters take about {size} bytes; Spanner accepts at "
            f"most {MAX_REQUEST_BYTES}",
            code="request-too-large",
        )
    if not is_dml:
        return
    shape = insert_cells_per_row(sql)
    if shape is None:
        return
    columns, tuples = shape
    longest = max((len(v) for v in values.values() if isinstance(v, list)), default=0)
    rows = tuples if tuples else max(1, longest)
    if tuples == 1 and longest:
        rows = 1  # one VALUES tuple inserts one row, whatever arrays it holds
    cells = rows * columns
    if cells > MAX_MUTATIONS:
        raise TooManyMutations(
            f"this write inserts {rows} rows of {columns} columns: {cells} mutations, more than "
            f"the {MAX_MUTATIONS} Spanner allows in one commit; send fewer rows per request"
        )
