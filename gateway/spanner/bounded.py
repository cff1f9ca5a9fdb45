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

- a point lookup (``point_lookup``): ``SELECT … FROM <table> [[AS] alias] WHERE …`` whose WHERE
  clause is a conjunction (AND at its top level, no OR, BETWEEN, set operation or other clause
  but ORDER BY and LIMIT after it) with a term ``column = @param`` (or a literal) for every column
  of the table's primary key: at most one row. The primary key comes from the schema
  (``INFORMATION_SCHEMA.INDEX_COLUMNS``, read when the policy is analysed, ``analyze.py``).

The bound is used only when it is at most the rows the read keeps (``max_rows + 1``): then the
unary reply carries nothing the read would not have streamed.

A bound only chooses the RPC, never the answer: a read gets the same rows either way (cut at
``max_rows``, ``truncated`` set alike), and a result over the unary reply's 10 MiB falls back to a
stream (``direct.py``). A statement misjudged as bounded would cost Spanner more work, not a
wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.compiled import CompiledQuery
from gateway.policy.sqlscan import SqlProblem, Token, statement_tokens

__all__ = ["PointLookup", "bounded_rows", "point_lookup"]

# Words that end or widen a WHERE clause in ways a conjunction of equalities does not survive
_WIDENING = {
    "OR", "BETWEEN", "UNION", "INTERSECT", "EXCEPT", "GROUP", "HAVING", "QUALIFY", "WINDOW",
    "SELECT", "FROM", "JOIN", "UNNEST",
}  # fmt: skip


@dataclass(frozen=True)
class PointLookup:
    """A single-table read and the columns its WHERE clause fixes by equality."""

    table: str
    fixed: frozenset[str]  # column names, upper-cased (Spanner's names are case-insensitive)


def _depths(tokens: list[Token]) -> list[int]:
    out, depth = [], 0
    for tok in tokens:
        if tok.kind == "punct" and tok.text in ")]":
            depth -= 1
        out.append(depth)
        if tok.kind == "punct" and tok.text in "([":
            depth += 1
    return out


def point_lookup(sql: str) -> PointLookup | None:
    """The statement's table and the columns it fixes, when it has the shape of a point lookup
    (see the module's notes); None otherwise."""
    try:
        tokens = statement_tokens(sql)
    except SqlProblem:
        return None
    depths = _depths(tokens)
    top = [k for k, d in enumerate(depths) if d == 0]
    if not tokens or not tokens[0].is_word("SELECT"):
        return None
    froms = [k for k in top if tokens[k].is_word("FROM")]
    wheres = [k for k in top if tokens[k].is_word("WHERE")]
    if len(froms) != 1 or len(wheres) != 1 or wheres[0] < froms[0]:
        return None
    item = tokens[froms[0] + 1 : wheres[0]]
    if not item or item[0].kind not in ("word", "quoted"):
        return None
    table = item[0].text
    rest = item[1:]
    if rest and rest[0].is_word("AS"):
        rest = rest[1:]
    if len(rest) > 1 or (rest and rest[0].kind not in ("word", "quoted")):
        return None
    alias = rest[0].text if rest else None
    end = len(tokens)
    for k in top:
        if k > wheres[0] and (tokens[k].is_word("LIMIT") or tokens[k].is_word("ORDER")):
            end = k
            break
    terms: list[list[Token]] = [[]]
    for k in range(wheres[0] + 1, end):
        tok = tokens[k]
        if depths[k] == 0:
            if (tok.kind == "word" and tok.text.upper() in _WIDENING) or tok.is_punct("|"):
                return None
            if tok.is_word("AND"):
                terms.append([])
                continue
        terms[-1].append(tok)
    fixed = set()
    for term in terms:
        column = _equality(term, table, alias)
        if column is not None:
            fixed.add(column.upper())
    return PointLookup(table, frozenset(fixed)) if fixed else None


def _equality(term: list[Token], table: str, alias: str | None) -> str | None:
    """``col`` of a term ``[qualifier.]col = value`` (either side), a value being a parameter or
    a literal; else None."""
    if len(term) < 3:
        return None
    at = [k for k, tok in enumerate(term) if tok.is_punct("=")]
    if len(at) != 1:
        return None
    sides = (term[: at[0]], term[at[0] + 1 :])
    for column_side, value_side in (sides, sides[::-1]):
        name = _column(column_side, table, alias)
        if name is not None and len(value_side) == 1 and value_side[0].kind in (
            "param", "string", "number",
        ):  # fmt: skip
            return name
    return None


def _column(tokens: list[Token], table: str, alias: str | None) -> str | None:
    if len(tokens) == 1 and tokens[0].kind in ("word", "quoted"):
        return tokens[0].text
    if (
        len(tokens) == 3
        and tokens[1].is_punct(".")
        and tokens[0].text.upper() in {table.upper(), (alias or table).upper()}
        and tokens[2].kind in ("word", "quoted")
    ):
        return tokens[2].text
    return None


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


def bounded_rows(query: CompiledQuery, *, point_lookup: bool = False) -> int | None:
    """At most how many rows ``query`` returns, when its statement proves it and that bound is
    within the rows a read keeps (``max_rows + 1``); else None (see the module's notes).
    ``point_lookup``: the schema showed it fixes its table's whole primary key (one row)."""
    if query.is_dml:
        return None
    keeps = query.model.max_rows + 1
    bound: int | None
    if point_lookup:
        bound = 1
    elif query.paging is not None:
        bound = query.paging.max + 1
    else:
        bound = _literal_limit(query.model.sql)
    return bound if bound is not None and bound <= keeps else None
