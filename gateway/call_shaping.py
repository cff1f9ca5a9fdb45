"""A call's result shaped for its caller (``Gateway._run`` applies these, so HTTP and MCP answers
both pass through them): the values a paginated query runs with (its cursor opened), the page
and the next page's cursor, and the masks of the columns the caller sees masked.

The pure parts are ``gateway.shaping`` (cursors, paging, masks); here they meet the call: what
goes into its audit event (``call.extra["pagination"]``, ``call.result``), the log lines, and the
errors answered. Every failure closes: nothing of the rows is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.audit.event import CallRecord
from gateway.errors import CursorRefused, GatewayError
from gateway.policy.compiled import CompiledQuery
from gateway.policy.decide import Decision
from gateway.policy.pagination import Paging
from gateway.shaping.cursors import CursorKeys, CursorNotOpened
from gateway.shaping.masks import MaskFailed, MaskKey, expect_columns, mask_result
from gateway.shaping.paging import (
    PageFailed,
    cut_page,
    next_cursor,
    open_page,
    page_size_of,
    run_values,
)
from gateway.spanner.analyze import Analysis
from gateway.spanner.results import Result

__all__ = ["masked", "page_values", "paged"]

log = logging.getLogger("spangate")


def page_values(
    call: CallRecord,
    decision: Decision,
    paging: Paging,
    keys: CursorKeys | None,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """What a paginated query runs with (``paging.run_values``): the caller's cursor opened
    (400 ``cursor-invalid`` or ``cursor-expired`` when it does not open: its reason goes to
    the audit trail, nothing of it to the caller), and the page size plus one. ``keys``: the
    gateway's cursor keys (``SPANGATE_CURSOR_KEYS``); ``clock``: the time cursors expire by."""
    assert decision.route is not None and decision.bound is not None
    assert call.principal is not None
    query, bound = decision.route.query, decision.bound.values
    record: dict[str, Any] = {
        "cursor": "none",
        "pageSize": page_size_of(bound, paging),
        "nextCursor": False,
    }
    call.extra["pagination"] = record
    if keys is None:  # runtime refuses to start so; an app assembled without keys
        log.error("query %s is paginated and no SPANGATE_CURSOR_KEYS are set", query.name)
        raise GatewayError("pagination cursors are not configured; see the logs")
    opened = None
    if decision.cursor is not None:
        try:
            opened = open_page(
                keys, query, paging, bound, call.principal, decision.cursor, now=clock()
            )
        except CursorNotOpened as exc:
            record.update(cursor="refused", refused=exc.reason)
            raise CursorRefused(exc.reason) from None
        record["cursor"] = "opened"
    return run_values(bound, paging, opened)


def paged(
    call: CallRecord,
    result: Result,
    decision: Decision,
    paging: Paging,
    keys: CursorKeys | None,
    clock: Callable[[], float],
    ttl_seconds: int,
) -> tuple[Result, str | None]:
    """The page of ``result`` (it holds one row more when a next page exists) and the next
    page's cursor, sealed for this caller (``keys``, expiring ``ttl_seconds`` after ``clock``),
    or None on the last page. A cursor that cannot be sealed: 500 ``internal``, nothing of the
    rows answered."""
    assert decision.route is not None and decision.bound is not None
    assert call.principal is not None and keys is not None
    bound = decision.bound.values
    page, more = cut_page(result, page_size_of(bound, paging))
    if not more:
        return page, None
    try:
        cursor = next_cursor(
            keys,
            decision.route.query,
            paging,
            bound,
            call.principal,
            page.rows[-1],
            now=clock(),
            ttl_seconds=ttl_seconds,
        )
    except PageFailed as exc:  # it names the column, never a value
        log.error("request %s: query %s: %s", call.request_id, decision.query_name, exc)
        call.result = replace(page, rows=[])  # the trail records counts, never rows
        raise GatewayError(
            "the next page's cursor could not be made, so nothing of this page is answered; "
            "see the logs for this request id"
        ) from None
    call.extra["pagination"]["nextCursor"] = True
    return page, cursor


def masked(
    call: CallRecord,
    result: Result,
    query: CompiledQuery,
    columns: Sequence[str],
    analysis: Analysis | None,
    root: MaskKey | None,
) -> Result:
    """``result`` with ``columns`` masked (``gateway.shaping.masks``), typed by the
    statement's own result fields (else by the policy's PLAN ``analysis``); ``root``: the key
    of ``hash`` masks (``SPANGATE_MASK_KEY``). Fails closed: a result whose columns are not
    those the policy's analysis found (a view or the schema changed since it was analysed), a
    masked column missing from it, or a value that cannot be masked: 500 ``internal``, nothing
    of the rows answered (a write says it committed)."""
    shape = analysis.shapes.get(query.name) if analysis is not None else None
    if len(result.types) == len(result.columns):
        types: dict[str, str | None] = dict(zip(result.columns, result.types, strict=True))
    else:  # an Idempotency-Key record stored without types
        types = {c.name: c.type for c in shape.columns} if shape is not None else {}
    masks = {column: query.model.mask[column] for column in columns}
    modes = {column: mask.with_ for column, mask in masks.items()}
    keys = {
        column: root.for_mask(query.name, column, mask.domain)
        for column, mask in masks.items()
        if mask.with_ == "hash" and root is not None
    }
    try:
        if shape is not None:
            expect_columns(result, [(c.name, c.type) for c in shape.columns])
        return mask_result(result, modes, types, keys)
    except MaskFailed as exc:  # its message names the mode and type, never the value
        log.error("request %s: query %s: %s", call.request_id, query.name, exc)
        call.result = replace(result, rows=[])  # the trail records counts, never rows
        error = GatewayError(
            "the result could not be masked, so none of it is answered; see the logs for "
            "this request id"
        )
        if query.is_dml:
            error.extra["outcome"] = "committed"  # it ran; only its answer failed
        raise error from None
