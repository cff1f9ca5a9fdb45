"""Spanner request options of a statement: tags, priority, and a read's staleness (pure)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from gateway.policy.compiled import CompiledQuery
from gateway.policy.model import parse_duration

__all__ = ["TAG_LIMIT", "Tags", "request_options", "snapshot_options", "tags_for"]

TAG_LIMIT = 50  # Spanner keeps the first 50 characters of a tag


@dataclass(frozen=True)
class Tags:
    request: str
    transaction: str


def tags_for(query: str, method: str, template: str, request_id: str) -> Tags:
    """Request tag ``<request id> <query> <METHOD> <template>`` and transaction tag ``<query>
    <METHOD> <template>``, cut at Spanner's 50 characters (so the route's end goes first)."""
    route = f"{method} {template}"
    return Tags(
        request=f"{request_id} {query} {route}"[:TAG_LIMIT],
        transaction=f"{query} {route}"[:TAG_LIMIT],
    )


def snapshot_options(query: CompiledQuery) -> dict[str, Any]:
    """A single-use snapshot's staleness: none (strong), ``max_staleness`` (a duration or
    ``{max: ...}``) or ``exact_staleness`` (``{exact: ...}``)."""
    value = query.model.staleness
    if value is None:
        return {}
    if isinstance(value, str):
        return {"max_staleness": dt.timedelta(seconds=parse_duration(value))}
    if value.max is not None:
        return {"max_staleness": dt.timedelta(seconds=parse_duration(value.max))}
    assert value.exact is not None
    return {"exact_staleness": dt.timedelta(seconds=parse_duration(value.exact))}


def request_options(query: CompiledQuery, tag: str) -> dict[str, Any]:
    """``request_options`` of a statement: its request tag, and its priority when declared."""
    options: dict[str, Any] = {"request_tag": tag}
    if query.model.priority is not None:
        from google.cloud.spanner_v1 import RequestOptions

        options["priority"] = {
            "low": RequestOptions.Priority.PRIORITY_LOW,
            "medium": RequestOptions.Priority.PRIORITY_MEDIUM,
            "high": RequestOptions.Priority.PRIORITY_HIGH,
        }[query.model.priority]
    return options
