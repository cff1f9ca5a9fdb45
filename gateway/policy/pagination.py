"""Keyset pagination, the policy's side (pure): what a query's ``pagination:`` may say, and how
its statement must read (``docs/pagination.md``).

A paginated query names its keyset (result columns that order the rows and name one row
uniquely together) and its page size (``default``, ``max``). Its statement stays exactly what its
author wrote: it reads past the previous page through one parameter per keyset column
(``from: cursor.COLUMN``, null on the first page), orders by the keyset and ends with
``LIMIT @p`` where ``p`` is the parameter ``from: page_size``.

Checks:

- ``pagination_findings`` (the loader, ``policy check``): reads only; every keyset column has
  exactly one ``from: cursor.COLUMN`` parameter and every such parameter names a keyset column;
  cursor parameters take only ``type`` (one of ``KEYSET_TYPES``) and ``description``; exactly one
  ``from: page_size`` parameter, INT64, without constraints of its own (its bounds are
  ``pagination.page_size``'s); no parameter named ``cursor`` (the caller's cursor argument); the
  statement's top level ends with ``ORDER BY`` the keyset (each ASC or DESC, in order) and
  ``LIMIT @<page size parameter>``; a keyset column is one the select list returns when the text
  says so (``selectlist.result_columns``) and is not masked (a cursor would carry its clear
  value); ``max_rows`` holds a page of ``page_size.max`` rows. ``from: cursor.…`` and
  ``from: page_size`` in a query without pagination are refused too.
- ``column_findings`` (the PLAN analysis: start-up, reload, ``policy check --database``): each
  keyset column is a result column, exactly (rows are keyed by it), of a ``KEYSET_TYPES`` type,
  the type its cursor parameter declares.

The cursors themselves are sealed and opened by ``gateway.shaping.cursors``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.policy.constraints import Finding, Where
from gateway.policy.model import KEYSET_TYPES, Policy, Query
from gateway.policy.selectlist import result_columns
from gateway.policy.sqlscan import SqlInfo, SqlProblem, Token, statement_tokens
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = [
    "CURSOR_ARGUMENT",
    "KEYSET_TYPES",
    "Order",
    "Paging",
    "column_findings",
    "compile_paging",
    "paginated_queries",
    "pagination_findings",
    "read_order",
]

# The caller's cursor: a query-string parameter (GET), a body field (other methods), an MCP
# tool argument. No parameter of a paginated query may take its name.
CURSOR_ARGUMENT = "cursor"

_CONSTRAINTS = ("min", "max", "max_length", "pattern", "enum")


@dataclass(frozen=True)
class Paging:
    """A paginated query, compiled: ``keyset`` columns with their ``directions`` (ASC, DESC, as
    the statement orders them), the parameter each is bound to (``cursor_params``, in keyset
    order), the page size parameter and its bounds."""

    keyset: tuple[str, ...]
    directions: tuple[str, ...]
    cursor_params: tuple[str, ...]
    page_param: str
    default: int
    max: int
    fingerprint: str  # of the statement and keyset: a cursor opens for exactly this reading


@dataclass(frozen=True)
class Order:
    """The end of a statement as pagination reads it: its top-level ``ORDER BY`` items (the
    last name of each, its direction) and the parameter of its ``LIMIT``; ``problem`` says what
    could not be read (the rest is then empty)."""

    items: tuple[tuple[str, str], ...] = ()
    limit: str | None = None
    problem: str | None = None


def paginated_queries(policy: Policy) -> list[str]:
    """The names of the queries with ``pagination`` (they need SPANGATE_CURSOR_KEYS)."""
    return [name for name, query in policy.queries.items() if query.pagination is not None]


def _depths(tokens: Sequence[Token]) -> list[int] | None:
    out = []
    depth = 0
    for tok in tokens:
        if tok.kind == "punct" and tok.text in ")]":
            depth -= 1
            if depth < 0:
                return None
        out.append(depth)
        if tok.kind == "punct" and tok.text in "([":
            depth += 1
    return out if depth == 0 else None


def _path_name(item: Sequence[Token]) -> str | None:
    """The last name of ``a``, ``t.a``, ``t.`a``` (words or quoted identifiers joined by dots)."""
    if not item or len(item) % 2 == 0:
        return None
    for k, tok in enumerate(item):
        if k % 2 == 0 and tok.kind not in ("word", "quoted"):
            return None
        if k % 2 == 1 and not tok.is_punct("."):
            return None
    return item[-1].text


def read_order(sql: str, dialect: Dialect = GOOGLESQL, params: Sequence[str] = ()) -> Order:
    """The statement's top-level ``ORDER BY … LIMIT @p`` (PostgreSQL: ``LIMIT $k``, read as the
    k-th of ``params``; see ``Order``)."""
    try:
        tokens = statement_tokens(sql, dialect, params)
    except SqlProblem as exc:
        return Order(problem=str(exc))
    depths = _depths(tokens)
    if depths is None:
        return Order(problem="its brackets do not balance")
    at = None
    for k in range(len(tokens) - 1):
        if depths[k] == 0 and tokens[k].is_word("ORDER") and tokens[k + 1].is_word("BY"):
            at = k  # the last one at the top level orders the result
    if at is None:
        return Order(problem="it has no ORDER BY at its top level")
    end = at + 2
    while end < len(tokens) and not (depths[end] == 0 and tokens[end].is_word("LIMIT")):
        end += 1
    items: list[list[Token]] = [[]]
    for k in range(at + 2, end):
        if depths[k] == 0 and tokens[k].is_punct(","):
            items.append([])
        else:
            items[-1].append(tokens[k])
    order: list[tuple[str, str]] = []
    for k, item in enumerate(items, start=1):
        direction = "ASC"
        if item and item[-1].is_word("ASC", "DESC"):
            direction = item[-1].text.upper()
            item = item[:-1]
        name = _path_name(item)
        if name is None:
            shown = " ".join(t.text for t in item) or "(nothing)"
            return Order(problem=(
                f"ORDER BY item {k} ({shown}) is not a column name, optionally followed by ASC "
                "or DESC"
            ))
        order.append((name, direction))
    rest = tokens[end:]
    if len(rest) != 2 or not rest[0].is_word("LIMIT") or rest[1].kind != "param":
        shown = " ".join(_shown(t, dialect, params) for t in rest)
        ending = f"it ends with {shown}" if shown else "it has no LIMIT"
        return Order(tuple(order), problem=f"{ending} after its ORDER BY")
    return Order(tuple(order), limit=rest[1].text)


def _shown(tok: Token, dialect: Dialect, params: Sequence[str]) -> str:
    if tok.kind != "param":
        return tok.text
    return _placeholder(tok.text, dialect, params)


def _placeholder(name: str, dialect: Dialect, params: Sequence[str]) -> str:
    """How a statement refers to parameter ``name``: ``@name``, or PostgreSQL's ``$k``."""
    if dialect != POSTGRESQL:
        return "@" + name
    return f"${list(params).index(name) + 1}" if name in params else name


def compile_paging(query: Query, dialect: Dialect = GOOGLESQL) -> Paging | None:
    """The query's ``Paging``, or None without ``pagination`` (a policy the loader accepted)."""
    pagination = query.pagination
    if pagination is None:
        return None
    by_column = {
        p.cursor_column: name for name, p in query.params.items() if p.cursor_column is not None
    }
    page = next((name for name, p in query.params.items() if p.is_page_size), "")
    read = read_order(query.sql, dialect, tuple(query.params))
    order = {name.casefold(): direction for name, direction in read.items}
    keyset = tuple(pagination.keyset)
    directions = tuple(order.get(c.casefold(), "ASC") for c in keyset)
    params = tuple(by_column.get(c, "") for c in keyset)
    types = [str(query.params[p].ptype) if p in query.params else "" for p in params]
    text = json.dumps([query.sql, keyset, directions, params, types, page], ensure_ascii=False)
    return Paging(
        keyset=keyset,
        directions=directions,
        cursor_params=params,
        page_param=page,
        default=pagination.page_size.default,
        max=pagination.page_size.max,
        fingerprint=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def _hint(name: str, choices: Sequence[str]) -> str:
    from gateway.policy.validate import did_you_mean

    return did_you_mean(name, [c for c in choices if c])


def pagination_findings(
    name: str, query: Query, info: SqlInfo | None, dialect: Dialect = GOOGLESQL
) -> list[Finding]:
    """What is wrong with the pagination of query ``name`` as written (``info``: its scanned
    SQL, or None when it did not scan)."""
    found: list[Finding] = []
    where: Where = ("queries", name)
    pagination = query.pagination
    cursor_params = {n: p for n, p in query.params.items() if p.cursor_column is not None}
    page_params = [n for n, p in query.params.items() if p.is_page_size]
    if pagination is None:
        for pname, param in query.params.items():
            if param.cursor_column is not None or param.is_page_size:
                found.append(((*where, "params", pname, "from"), (
                    f"from: {param.from_} needs the query's pagination (keyset and page_size)"
                )))
        return found
    at: Where = (*where, "pagination")
    keyset = pagination.keyset
    if info is not None and info.kind == "dml":
        found.append((at, (
            f"query {name} is DML: pagination pages through what a read returns (a write's "
            f"{'RETURNING' if dialect == POSTGRESQL else 'THEN RETURN'} rows come back whole)"
        )))
        return found
    if "cursor" in query.params:
        found.append(((*where, "params", CURSOR_ARGUMENT), (
            "a paginated query's caller passes its cursor as 'cursor': name this parameter "
            "otherwise"
        )))
    for k, column in enumerate(keyset):
        if column in query.mask:
            found.append(((*at, "keyset", k), (
                f"keyset column {column} is masked: the cursor would carry its clear value out "
                "of the gateway (sealed, but out all the same); order by columns that are not "
                "masked"
            )))
    claimed: dict[str, str] = {}
    for pname, param in cursor_params.items():
        column = param.cursor_column or ""
        if column not in keyset:
            found.append(((*where, "params", pname, "from"), (
                f"from: cursor.{column} names no keyset column of query {name} (keyset: "
                f"{', '.join(keyset)}){_hint(column, keyset)}"
            )))
        elif column in claimed:
            found.append(((*where, "params", pname, "from"), (
                f"keyset column {column} is already carried by parameter {claimed[column]}: one "
                "parameter per keyset column"
            )))
        else:
            claimed[column] = pname
        found.extend(_plain(where, pname, query, "a cursor parameter", (
            f"its value is the previous page's last {column}, or null on the first page"
        )))
        ptype = param.ptype
        if ptype.is_array or ptype.kind not in KEYSET_TYPES:
            found.append(((*where, "params", pname, "type"), (
                f"a cursor parameter is one of {', '.join(KEYSET_TYPES)}, as its keyset column "
                f"is, not {ptype}"
            )))
    for k, column in enumerate(keyset):
        if column not in claimed:
            found.append(((*at, "keyset", k), (
                f"keyset column {column} has no parameter: declare one with from: "
                f"cursor.{column} and read past it in the statement's WHERE"
            )))
    page = page_params[0] if page_params else None
    if page is None:
        found.append(((*at, "page_size"), (
            "no parameter carries the page size: declare one (type: INT64, from: page_size) and "
            f"end the statement with LIMIT {'$<its number>' if dialect == POSTGRESQL else '@it'}"
        )))
    for extra in page_params[1:]:
        found.append(((*where, "params", extra, "from"), (
            f"parameter {page_params[0]} already carries the page size: one from: page_size "
            "parameter"
        )))
    if page is not None:
        param = query.params[page]
        if param.ptype.is_array or param.ptype.kind != "INT64":
            found.append(((*where, "params", page, "type"), (
                f"the page size parameter is INT64, not {param.ptype}"
            )))
        found.extend(_plain(where, page, query, "the page size parameter", (
            "its bounds are pagination.page_size's (default, max), and it is at least 1"
        )))
    if query.max_rows < pagination.page_size.max:
        found.append(((*at, "page_size", "max"), (
            f"pages of up to {pagination.page_size.max} rows, but max_rows is "
            f"{query.max_rows}: raise max_rows or lower page_size.max"
        )))
    if info is None:
        return found
    declared = tuple(query.params)
    order = read_order(query.sql, dialect, declared)
    limit = _placeholder(page, dialect, declared) if page else "@<page size>"
    wanted = f"ORDER BY {', '.join(keyset)} (each ASC or DESC) LIMIT {limit}"
    if order.problem is not None:
        found.append(((*where, "sql"), (
            f"query {name} pages by keyset: its statement must end with {wanted}, but "
            f"{order.problem}"
        )))
    elif [c.casefold() for c, _ in order.items] != [c.casefold() for c in keyset]:
        shown = ", ".join(f"{c} {d}" for c, d in order.items)
        found.append(((*where, "sql"), (
            f"ORDER BY {shown} does not list exactly the keyset ({', '.join(keyset)}), in its "
            f"order: the statement must end with {wanted}"
        )))
    elif page is not None and order.limit != page:
        found.append(((*where, "sql"), (
            f"LIMIT {_placeholder(order.limit or '', dialect, declared)} is not the page size "
            f"parameter: the statement must end with {wanted}"
        )))
    columns = result_columns(query.sql, dialect)
    if columns is not None:
        for k, column in enumerate(keyset):
            if column not in columns:
                shown = ", ".join(c or "(unnamed)" for c in columns) or "none"
                found.append(((*at, "keyset", k), (
                    f"keyset column {column} is not returned by query {name} (its columns: "
                    f"{shown}){_hint(column, columns)}"
                )))
    return found


def _plain(where: Where, pname: str, query: Query, what: str, why: str) -> list[Finding]:
    """A cursor or page size parameter carries nothing but its type (and description)."""
    param = query.params[pname]
    found: list[Finding] = []
    for field in _CONSTRAINTS:
        if getattr(param, field) is not None:
            found.append(((*where, "params", pname, field), f"{what} takes no {field}: {why}"))
    if param.has_default:
        found.append(((*where, "params", pname, "default"), f"{what} takes no default: {why}"))
    if param.nullable:
        found.append(((*where, "params", pname, "nullable"), f"{what} takes no nullable: {why}"))
    return found


def column_findings(
    name: str, query: Query, columns: Sequence[tuple[str, str]]
) -> list[Finding]:
    """What is wrong with the keyset of query ``name`` given its analysed result ``columns``
    (name, Spanner type)."""
    pagination = query.pagination
    if pagination is None:
        return []
    found: list[Finding] = []
    types = dict(columns)
    names = [c for c, _ in columns]
    by_column = {
        p.cursor_column: (pname, p) for pname, p in query.params.items() if p.cursor_column
    }
    for k, column in enumerate(pagination.keyset):
        where: Where = ("queries", name, "pagination", "keyset", k)
        if column not in types:
            shown = ", ".join(n or "(unnamed)" for n in names) or "none"
            found.append((where, (
                f"keyset column {column} is not returned by query {name} (its columns: "
                f"{shown}){_hint(column, names)}"
            )))
            continue
        ctype = types[column]
        if ctype not in KEYSET_TYPES:
            found.append((where, (
                f"keyset column {column} of query {name} is {ctype}; a keyset column is one of "
                f"{', '.join(KEYSET_TYPES)}"
            )))
            continue
        declared = by_column.get(column)
        if declared is not None and str(declared[1].ptype) != ctype:
            pname = declared[0]
            found.append((("queries", name, "params", pname, "type"), (
                f"parameter {pname} carries keyset column {column}, which is {ctype}: declare "
                f"it type: {ctype}"
            )))
    return found
