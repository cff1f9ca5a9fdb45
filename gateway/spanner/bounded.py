"""Reads whose statement itself bounds how many rows they return (pure).

Such a read is sent as one unary ExecuteSql (``direct.py``): the whole result in one reply, which
is cheaper than a stream when every row is wanted anyway. A read without such a bound streams, and
stops after ``max_rows + 1`` rows: a unary call would make Spanner produce, and send, all of
them. The bound is proved from the statement's text, never assumed from ``max_rows`` (which cuts
a result, it does not bound it):

- a paginated query ends with ``ORDER BY … LIMIT @page`` (``policy.pagination`` checked that at
  load), and the gateway binds ``@page`` to the page size plus one, the page size being at most
  ``page_size.max``: at most ``max + 1`` rows;
- a query whose statement ends, at its top level, with ``LIMIT <integer>`` (optionally followed by
  ``OFFSET <integer>``): at most that many rows (a top-level LIMIT bounds the whole result, set
  operations and pipe syntax included).

The bound is used only when it is at most the rows the read keeps (``max_rows + 1``): then the
unary reply carries nothing the read would not have streamed.
"""

from __future__ import annotations

from gateway.policy.compiled import CompiledQuery
from gateway.policy.sqlscan import SqlProblem, Token, statement_tokens

__all__ = ["bounded_rows"]


def _literal_limit(sql: str) -> int | None:
    """N of a statement ending with ``LIMIT N`` or ``LIMIT N OFFSET M`` (integer literals). The
    brackets balance (the statement loaded), so its last tokens are at its top level."""
    try:
        tokens = statement_tokens(sql)
    except SqlProblem:
        return None
    if len(tokens) >= 2 and tokens[-2].is_word("OFFSET"):
        if not _integer(tokens[-1]):
            return None
        tokens = tokens[:-2]
    if len(tokens) >= 2 and tokens[-2].is_word("LIMIT") and _integer(tokens[-1]):
        return int(tokens[-1].text)
    return None


def _integer(token: Token) -> bool:
    return token.kind == "number" and token.text.isdigit()


def bounded_rows(query: CompiledQuery) -> int | None:
    """At most how many rows ``query`` returns, when its statement proves it and that bound is
    within the rows a read keeps (``max_rows + 1``); else None (see the module's notes)."""
    if query.is_dml:
        return None
    keeps = query.model.max_rows + 1
    bound: int | None
    if query.paging is not None:
        bound = query.paging.max + 1
    else:
        bound = _literal_limit(query.model.sql)
    return bound if bound is not None and bound <= keeps else None
