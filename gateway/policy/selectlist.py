"""The names of a statement's result columns, read from its text where the text alone decides them.

``result_columns`` reads the select list of a query's outermost SELECT (after its WITH clause;
the first SELECT of a UNION, INTERSECT or EXCEPT, which names the result), or the list after
``THEN RETURN`` of DML (PostgreSQL: ``RETURNING``), with ``sqlscan``'s tokenizer of the policy's
dialect. Spanner names a result column:

- ``expr AS name``: ``name``, as written;
- a bare column or path (``Email``, ``c.Email``, a backtick-quoted one): its last part, as
  written (``email`` stays ``email``, measured on the emulator);
- any other expression: no name (the gateway refuses such a column when it analyses the policy);
  PostgreSQL names it itself (``?column?``, a function's name): not read from the text.

In the PostgreSQL dialect an unquoted name is folded to lower case (``SELECT OrderId`` returns
``orderid``) and a ``"quoted"`` one keeps its case (``AS "OrderId"``).

Answered only when every item is one of these, recognised without doubt; ``None`` otherwise: a
``*`` (its columns are the table's, which only Spanner knows), ``SELECT AS STRUCT|VALUE``, a
parenthesised query, ``THEN RETURN WITH ACTION``, angle-bracketed types (``ARRAY<…>``), or an
item ending in a word that may be an implicit alias or the end of an expression (``x IS NULL``,
``INTERVAL 1 DAY``). DML without ``THEN RETURN`` returns no columns: ``()``. Spanner's own answer
(the PLAN analysis at start-up, on reload and by ``policy check --database``) is the authority;
this reading lets ``policy check`` refuse a mask on a column that is not returned without it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from gateway.policy.sqlscan import SqlProblem, Token, statement_tokens
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = ["ResultItem", "result_columns", "result_items", "set_from_params"]

# Where the select list ends (at depth 0).
_LIST_END = frozenset(
    {
        "FROM", "WHERE", "GROUP", "HAVING", "QUALIFY", "WINDOW", "ORDER", "LIMIT", "OFFSET",
        "UNION", "INTERSECT", "EXCEPT", "FOR",
    }
)  # fmt: skip
_OPEN = frozenset("([")
_CLOSE = frozenset(")]")


def _skip_hint(tokens: list[Token], i: int) -> int:
    """Past an ``@{…}`` hint starting at ``i`` (else ``i``)."""
    if i >= len(tokens) or tokens[i].kind != "hint":
        return i
    depth = 0
    for j in range(i + 1, len(tokens)):
        if tokens[j].is_punct("{"):
            depth += 1
        elif tokens[j].is_punct("}"):
            depth -= 1
            if depth == 0:
                return j + 1
    return len(tokens)


def _depths(tokens: list[Token]) -> list[int] | None:
    """Each token's bracket depth (a bracket's own: the depth outside it); None when brackets
    do not balance."""
    out = []
    depth = 0
    for tok in tokens:
        if tok.kind == "punct" and tok.text in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
        out.append(depth)
        if tok.kind == "punct" and tok.text in _OPEN:
            depth += 1
    return out if depth == 0 else None


def _select_list(tokens: list[Token], depths: list[int]) -> tuple[int, int] | None:
    """[start, end) of the outermost SELECT's list, or None when not read from text."""
    i = _skip_hint(tokens, 0)
    if i >= len(tokens) or not tokens[i].is_word("SELECT", "WITH"):
        return None  # a parenthesised query
    while i < len(tokens) and not (depths[i] == 0 and tokens[i].is_word("SELECT")):
        i += 1
    if i >= len(tokens):
        return None
    i = _skip_hint(tokens, i + 1)
    if i < len(tokens) and tokens[i].is_word("AS", "WITH"):
        return None  # SELECT AS STRUCT / AS VALUE / WITH DIFFERENTIAL_PRIVACY
    if i < len(tokens) and tokens[i].is_word("DISTINCT", "ALL"):
        i += 1
    end = i
    while end < len(tokens) and not (
        depths[end] == 0
        and tokens[end].is_word(*_LIST_END)
        and not tokens[end - 1].is_punct(".")  # c.Limit: a field named like a keyword
    ):
        end += 1
    return i, end


def _returning_list(
    tokens: list[Token], depths: list[int], dialect: Dialect
) -> tuple[int, int] | None:
    if dialect == POSTGRESQL:
        for k, tok in enumerate(tokens):
            if depths[k] == 0 and tok.is_word("RETURNING"):
                return k + 1, len(tokens)
        return len(tokens), len(tokens)
    for k in range(len(tokens) - 1):
        if depths[k] == 0 and tokens[k].is_word("THEN") and tokens[k + 1].is_word("RETURN"):
            start = k + 2
            if start < len(tokens) and tokens[start].is_word("WITH"):
                return None  # WITH ACTION adds a column of its own
            return start, len(tokens)
    return len(tokens), len(tokens)


def _is_path(item: list[Token]) -> bool:
    """``a``, ``a.b.c`` (words or quoted identifiers joined by dots)."""
    for k, tok in enumerate(item):
        if k % 2 == 0 and tok.kind not in ("word", "quoted"):
            return False
        if k % 2 == 1 and not tok.is_punct("."):
            return False
    return len(item) % 2 == 1


def _name(item: list[Token]) -> str | None:
    """The result column's name ("" for an unnamed one), or None when not certain."""
    if not item:
        return None
    if item[0].is_punct("*") or any(
        a.is_punct(".") and b.is_punct("*") for a, b in itertools.pairwise(item)
    ):
        return None
    last = item[-1]
    if item[0].is_punct("(") and last.is_punct(")"):
        return None  # a parenthesised expression: whether Spanner names it is not certain
    if len(item) >= 2 and item[-2].is_word("AS"):  # an item is balanced: this AS is its own
        return last.text if last.kind in ("word", "quoted") else None
    if _is_path(item):
        return last.text
    if last.kind in ("word", "quoted"):
        return None  # an implicit alias, or an expression ending in a keyword: not certain
    return ""  # an expression without a name


@dataclass(frozen=True)
class ResultItem:
    """One item of the list that names the result columns (see ``result_items``)."""

    name: str  # the result column's name ("" when unnamed)
    source: str | None  # the column a bare path names (``c.Email``, ``c.Email AS x``: Email)
    has_param: bool  # the item's expression holds a parameter (``@p AS x``, ``LOWER(@p)``)


def _source(item: list[Token]) -> str | None:
    expression = item[:-2] if len(item) >= 2 and item[-2].is_word("AS") else item
    return expression[-1].text if expression and _is_path(expression) else None


def result_columns(sql: str, dialect: Dialect = GOOGLESQL) -> tuple[str, ...] | None:
    """The result column names of ``sql`` read from its text (see the module doc), or None."""
    items = result_items(sql, dialect)
    return None if items is None else tuple(item.name for item in items)


def result_items(sql: str, dialect: Dialect = GOOGLESQL) -> tuple[ResultItem, ...] | None:
    """The items of ``sql``'s result list, where the text decides every name (as
    ``result_columns``), or None: each item's name, the column a bare path names, and whether
    its expression holds a parameter."""
    try:
        tokens = statement_tokens(sql, dialect)
    except SqlProblem:
        return None
    depths = _depths(tokens)
    if not tokens or depths is None:
        return None
    at = _skip_hint(tokens, 0)
    if at >= len(tokens):
        return None
    if tokens[at].is_word("INSERT", "UPDATE", "DELETE"):
        span = _returning_list(tokens, depths, dialect)
    else:
        span = _select_list(tokens, depths)
    if span is None:
        return None
    start, end = span
    if any(
        tokens[k].is_punct("<") and tokens[k - 1].is_word("ARRAY", "STRUCT")
        for k in range(max(start, 1), end)
    ):
        return None  # commas inside ARRAY<…> or STRUCT<…> are not item separators
    if start == end:
        return ()
    items: list[list[Token]] = [[]]
    for k in range(start, end):
        if depths[k] == 0 and tokens[k].is_punct(","):
            items.append([])
        else:
            items[-1].append(tokens[k])
    if len(items) > 1 and not items[-1]:
        items.pop()  # GoogleSQL allows a trailing comma
    out = []
    for item in items:
        name = _name(item)
        if name is None or (name == "" and dialect == POSTGRESQL):
            return None  # PostgreSQL names expressions itself (?column?, a function's name)
        has_param = any(tok.kind == "param" for tok in item)
        out.append(ResultItem(name, _source(item), has_param))
    return tuple(out)


def _split(tokens: list[Token], depths: list[int], start: int, end: int, depth: int) -> list[
    list[Token]
]:
    """The tokens of [start, end) split at the commas of bracket depth ``depth``."""
    parts: list[list[Token]] = [[]]
    for k in range(start, end):
        if depths[k] == depth and tokens[k].is_punct(","):
            parts.append([])
        else:
            parts[-1].append(tokens[k])
    return parts


def _closing(tokens: list[Token], depths: list[int], k: int) -> int:
    """The index of the bracket closing the one at ``k``."""
    for j in range(k + 1, len(tokens)):
        if depths[j] == depths[k] and tokens[j].kind == "punct" and tokens[j].text in _CLOSE:
            return j
    return len(tokens)


def _insert_targets(tokens: list[Token], depths: list[int], at: int) -> set[str]:
    """INSERT [OR …] [INTO] t (a, b) VALUES (x, y), …: the columns a row's value with a
    parameter goes to (``INSERT … SELECT`` is not read)."""
    k = at
    while k < len(tokens) and not (depths[k] == 0 and tokens[k].is_punct("(")):
        if depths[k] == 0 and tokens[k].is_word("VALUES", "SELECT", "WITH"):
            return set()  # no column list
        k += 1
    if k >= len(tokens):
        return set()
    close = _closing(tokens, depths, k)
    names = [part[-1].text.upper() if part else "" for part in _split(tokens, depths, k + 1,
                                                                       close, 1)]  # fmt: skip
    found: set[str] = set()
    k = close + 1
    if not (k < len(tokens) and tokens[k].is_word("VALUES")):
        return found
    k += 1
    while k < len(tokens) and tokens[k].is_punct("("):
        close = _closing(tokens, depths, k)
        for name, value in zip(names, _split(tokens, depths, k + 1, close, 1), strict=False):
            if any(tok.kind == "param" for tok in value):
                found.add(name)
        k = close + 1
        if k < len(tokens) and tokens[k].is_punct(","):
            k += 1
    return found


def _update_targets(tokens: list[Token], depths: list[int], at: int) -> set[str]:
    """UPDATE t SET a = x, b = y WHERE …: the columns set to a value with a parameter."""
    k = next((j for j in range(at, len(tokens)) if depths[j] == 0 and tokens[j].is_word("SET")),
             None)  # fmt: skip
    if k is None:
        return set()
    end = next((j for j in range(k + 1, len(tokens)) if depths[j] == 0 and tokens[j].is_word(
        "WHERE", "THEN")), len(tokens))  # fmt: skip
    found: set[str] = set()
    for assignment in _split(tokens, depths, k + 1, end, 0):
        eq = next((i for i, tok in enumerate(assignment) if tok.is_punct("=")), None)
        if eq is None or not _is_path(assignment[:eq]):
            continue
        if any(tok.kind == "param" for tok in assignment[eq + 1 :]):
            found.add(assignment[eq - 1].text.upper())
    return found


def set_from_params(sql: str, dialect: Dialect = GOOGLESQL) -> frozenset[str]:
    """The columns (upper case: Spanner's names are case-insensitive) that DML ``sql`` sets to
    a value holding a parameter: an INSERT's VALUES, an UPDATE's SET. Empty for a query, or
    when the text cannot be read."""
    try:
        tokens = statement_tokens(sql, dialect)
    except SqlProblem:
        return frozenset()
    depths = _depths(tokens)
    if not tokens or depths is None:
        return frozenset()
    at = _skip_hint(tokens, 0)
    if at < len(tokens) and tokens[at].is_word("INSERT"):
        return frozenset(_insert_targets(tokens, depths, at + 1))
    if at < len(tokens) and tokens[at].is_word("UPDATE"):
        return frozenset(_update_targets(tokens, depths, at + 1))
    return frozenset()
