"""The names of a statement's result columns, read from its text where the text alone decides them.

``result_columns`` reads the select list of a query's outermost SELECT (after its WITH clause;
the first SELECT of a UNION, INTERSECT or EXCEPT, which names the result), or the list after
``THEN RETURN`` of DML, with ``sqlscan``'s tokenizer. Spanner names a result column:

- ``expr AS name``: ``name``, as written;
- a bare column or path (``Email``, ``c.Email``, a backtick-quoted one): its last part, as
  written (``email`` stays ``email``, measured on the emulator);
- any other expression: no name (the gateway refuses such a column when it analyses the policy).

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

from gateway.policy.sqlscan import SqlProblem, Token, statement_tokens

__all__ = ["result_columns"]

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


def _returning_list(tokens: list[Token], depths: list[int]) -> tuple[int, int] | None:
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


def result_columns(sql: str) -> tuple[str, ...] | None:
    """The result column names of ``sql`` read from its text (see the module doc), or None."""
    try:
        tokens = statement_tokens(sql)
    except SqlProblem:
        return None
    depths = _depths(tokens)
    if not tokens or depths is None:
        return None
    at = _skip_hint(tokens, 0)
    if at >= len(tokens):
        return None
    if tokens[at].is_word("INSERT", "UPDATE", "DELETE"):
        span = _returning_list(tokens, depths)
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
    names = [_name(item) for item in items]
    if any(name is None for name in names):
        return None
    return tuple(name for name in names if name is not None)
