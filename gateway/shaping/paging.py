"""Keyset pagination in the request path (pure; the clock is passed in): a caller's cursor opened
into the values of a query's ``from: cursor.COLUMN`` parameters, a page cut from what the
statement read, and the next page's cursor sealed for the same caller (``docs/pagination.md``).

- The statement reads one row more than the page (the page size parameter is bound to the page
  size plus one, ``run_values``): a page with a row beyond it answers ``next_cursor``, sealed
  from the page's last row; the last page answers none (never an empty page after a full one).
- A cursor opens only for the principal it was sealed for (issuer URL, subject, actors), the
  query (name and ``Paging.fingerprint``) and the call's other bound parameters (their digest,
  ``params_digest``: claim-bound ones included, the page size not, so a caller may change the
  page size from page to page); see ``gateway.shaping.cursors``.
- A keyset value that is NULL in a page's last row cannot be carried (null binds the first page):
  ``PageFailed``, a 500 that names the column (keyset columns must be NOT NULL), never a value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledQuery
from gateway.policy.pagination import Paging
from gateway.policy.types import TypeProblem, coerce, json_value
from gateway.shaping.cursors import (
    CursorKeys,
    CursorNotOpened,
    CursorState,
    associated_data,
    open_cursor,
    seal_cursor,
)
from gateway.spanner.results import Result

__all__ = [
    "PageFailed",
    "binding",
    "cut_page",
    "next_cursor",
    "open_page",
    "page_size_of",
    "params_digest",
    "run_values",
]


class PageFailed(Exception):
    """The next cursor cannot be sealed (a NULL or unreadable keyset value, a cursor too long):
    the message names the column and why, never a value."""


def binding(principal: Principal, query: CompiledQuery, paging: Paging) -> bytes:
    """The associated data a cursor of ``query`` for ``principal`` is sealed with."""
    return associated_data(
        iss=principal.iss,
        subject=principal.subject,
        actors=principal.actors,
        query=query.name,
        fingerprint=paging.fingerprint,
    )


def params_digest(values: Mapping[str, Any], paging: Paging) -> bytes:
    """SHA-256 of the canonical JSON of the bound values other than the cursor's and the page
    size (keys sorted, the gateway's JSON form of each type)."""
    skip = {*paging.cursor_params, paging.page_param}
    other = {name: json_value(value) for name, value in values.items() if name not in skip}
    text = json.dumps(other, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


def page_size_of(values: Mapping[str, Any], paging: Paging) -> int:
    """The page size the call asked for (binding has checked it: 1 to ``paging.max``)."""
    size = values[paging.page_param]
    assert isinstance(size, int)
    return size


def open_page(
    keys: CursorKeys,
    query: CompiledQuery,
    paging: Paging,
    values: Mapping[str, Any],
    principal: Principal,
    token: object,
    *,
    now: float,
) -> dict[str, Any]:
    """The values of the cursor parameters from ``token`` (typed for binding), or
    CursorNotOpened (``cursors.REFUSALS``)."""
    state = open_cursor(
        keys,
        binding(principal, query, paging),
        token,
        params=params_digest(values, paging),
        now=now,
    )
    if len(state.values) != len(paging.keyset):
        raise CursorNotOpened("malformed")
    opened: dict[str, Any] = {}
    for pname, (type_name, value) in zip(paging.cursor_params, state.values, strict=True):
        spec = query.params[pname]
        if type_name != str(spec.ptype) or value is None:
            raise CursorNotOpened("malformed")
        try:
            opened[pname] = coerce(spec.ptype, value, from_text=False)
        except TypeProblem:
            raise CursorNotOpened("malformed") from None
    return opened


def run_values(
    values: Mapping[str, Any], paging: Paging, opened: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What the statement runs with: the bound values, the cursor's in place of the first
    page's nulls, and the page size plus one (the row that tells whether a next page exists)."""
    out = dict(values)
    out.update(opened or {})
    out[paging.page_param] = page_size_of(values, paging) + 1
    return out


def cut_page(result: Result, page_size: int) -> tuple[Result, bool]:
    """The page (at most ``page_size`` rows) and whether a row remained beyond it."""
    if len(result.rows) <= page_size:
        return result, False
    rows = result.rows[:page_size]
    return dataclasses.replace(result, rows=rows, row_count=len(rows)), True


def next_cursor(
    keys: CursorKeys,
    query: CompiledQuery,
    paging: Paging,
    values: Mapping[str, Any],
    principal: Principal,
    last: Mapping[str, Any],
    *,
    now: float,
    ttl_seconds: int,
) -> str:
    """The cursor of the page after the one ending with row ``last``; PageFailed when it
    cannot be sealed."""
    pairs: list[tuple[str, Any]] = []
    for column, pname in zip(paging.keyset, paging.cursor_params, strict=True):
        spec = query.params[pname]
        value = last.get(column)
        if value is None:
            raise PageFailed(
                f"keyset column {column} is NULL (or absent) in the page's last row: a cursor "
                "cannot carry it (null means the first page); keyset columns must be NOT NULL"
            )
        try:
            coerce(spec.ptype, value, from_text=False)  # it binds back, exactly
        except TypeProblem:
            raise PageFailed(
                f"keyset column {column}'s value is not a {spec.ptype} as its parameter "
                f"{pname} declares"
            ) from None
        pairs.append((str(spec.ptype), value))
    state = CursorState(
        params_digest(values, paging), tuple(pairs), int(now) + ttl_seconds
    )
    try:
        return seal_cursor(keys, binding(principal, query, paging), state)
    except ValueError as exc:
        raise PageFailed(f"the next cursor cannot be sealed: {exc}") from None
