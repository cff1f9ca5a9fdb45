"""What the gateway needs to know about a whitelisted statement, read by a tokenizer.

GoogleSQL is read here; a policy with ``spanner.dialect: postgresql`` has its statements read by
``pgsql``'s tokenizer into the same tokens (``$k`` as the k-th declared parameter), and the rest
below (kind, tables, one statement) applies alike, with ``RETURNING`` for ``THEN RETURN``. A
``$1`` in a GoogleSQL statement is refused, saying which dialect to set.

``scan_sql`` never executes or fully parses SQL; it tokenizes it the way Spanner does (GoogleSQL's
readers, below, in a ``Lexicon`` for the scanning loop both dialects share: ``sqltoken.scan``),
so that text inside string and bytes literals (``'…'``, ``"…"``, ``'''…'''``, ``\"\"\"…\"\"\"``, with
``r``/``b``/``rb``/``br`` prefixes and backslash escapes), backtick-quoted identifiers and
comments (``--``, ``#``, ``/* */``) is never taken for a parameter, a keyword or a statement
separator. Contract:

- ``params``: the ``@name`` parameters in order of first appearance, case as written. ``@@name``
  (system variables) and ``@{…}`` (hints) are not parameters.
- ``kind``: ``"query"`` when the first keyword (after an optional ``@{…}`` statement hint) is
  SELECT or WITH, or the statement starts with ``(``; ``"dml"`` for INSERT, UPDATE and DELETE.
  Anything else (DDL, CALL, GRAPH, pipe syntax starting with FROM, …) is refused.
- ``returning``: DML with ``THEN RETURN``.
- ``tables``: best effort, for grants: the names after FROM, JOIN, INTO, UPDATE, DELETE [FROM],
  and the further items of a comma join right after a FROM item (``FROM a, b``), dotted paths
  joined with ``.``, as written, without duplicates. Subqueries, UNNEST and table-valued
  functions are skipped, WITH names are left out, ``EXTRACT(… FROM …)`` and ``IS DISTINCT FROM``
  are not tables. Approximate: a comma after a JOIN's ON condition is not followed, and a
  correlated array path in a comma join (``FROM t, t.items``) is listed as if it were a table.

Line terminators are Spanner's (ZetaSQL's lexer): ``--`` and ``#`` comments end at a line feed OR a
carriage return, and a quoted string or identifier that is not triple-quoted may hold neither.
Before tokenizing, any character a reader and Spanner may not see alike is refused: control
characters (Unicode Cc) other than tab and line feed (so CR, VT, FF, NEL), format characters (Cf:
bidirectional overrides, zero-width characters), line and paragraph separators (U+2028, U+2029)
and lone surrogates. ``WHERE TenantId = @tenant -- scoped\r OR TRUE`` is thus refused rather than
read as one comment to the end, which Spanner ends at the CR (the ``OR TRUE`` then runs). In a
string literal such a character is written as an escape (``'\r'``). Outside quoted text and
comments, whitespace is ASCII only: a Unicode space (U+00A0, U+2003, …) is refused there.

Anything the tokenizer cannot accept raises ``SqlProblem`` (a ValueError) whose message says what
and where (line and column within the statement): an empty statement, more than one statement (a
``;`` followed by anything but whitespace and comments), a statement that is neither a query nor
DML, an unterminated string, quoted identifier or comment, a stray ``@`` (or ``@@`` before
anything but a name), a character refused above, and a comment marker (``--``, ``/*``, ``*/``,
``#``) inside or touching a token that is not quoted text: ``@`a--b` `` (a parameter whose
name is quoted with backticks), ``2*/*c*/3``, a ``*/`` with no comment open (``sqltoken.scan``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Literal

from gateway.policy.sqltoken import (
    DIGITS,
    GOOGLESQL,
    IDENT_CHARS,
    IDENT_START,
    POSTGRESQL,
    Dialect,
    Lexicon,
    SqlInfo,
    SqlProblem,
    Token,
    fail,
    number_end,
    refuse_unclear_characters,
    scan,
)

__all__ = ["Dialect", "SqlInfo", "SqlProblem", "Token", "scan_sql", "statement_tokens"]

_QUERY_START = frozenset({"SELECT", "WITH"})
_DML_START = frozenset({"INSERT", "UPDATE", "DELETE"})
_DDL = frozenset({"CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "RENAME", "ANALYZE", "TRUNCATE"})
# Words that end a FROM item rather than alias it.
_CLAUSE_WORDS = frozenset(
    {
        "WHERE", "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "OUTER", "ON", "USING",
        "GROUP", "ORDER", "LIMIT", "OFFSET", "UNION", "INTERSECT", "EXCEPT", "HAVING", "WINDOW",
        "QUALIFY", "TABLESAMPLE", "SET", "VALUES", "SELECT", "THEN", "FOR", "WITH",
        "RETURNING",
    }
)


def _string_end(sql: str, start: int, quote_at: int) -> int:
    """The index just past the string literal whose opening quote is at ``quote_at``."""
    quote = sql[quote_at]
    triple = sql.startswith(quote * 3, quote_at)
    delimiter = quote * 3 if triple else quote
    i = quote_at + len(delimiter)
    while i < len(sql):
        c = sql[i]
        if c == "\\":  # an escape, also in raw strings: r'\'' is the two characters \'
            i += 2
            continue
        if c in "\r\n" and not triple:
            break
        if sql.startswith(delimiter, i):
            return i + len(delimiter)
        i += 1
    raise fail(sql, start, "unterminated string literal")


def _string_prefix(sql: str, i: int) -> int | None:
    """If a string literal with an r/b/rb/br prefix starts at ``i``, the index of its quote."""
    for length in (2, 1):
        prefix = sql[i : i + length].lower()
        if (
            prefix in ("r", "b", "rb", "br")
            and len(prefix) == length
            and sql[i + length : i + length + 1] in ("'", '"')
        ):
            return i + length
    return None


def _identifier_end(sql: str, i: int) -> int:
    while i < len(sql) and sql[i] in IDENT_CHARS:
        i += 1
    return i


def _backtick(sql: str, i: int) -> tuple[str, int]:
    """The unquoted text of the backtick-quoted identifier at ``i`` and the index past it."""
    j = i + 1
    while j < len(sql):
        c = sql[j]
        if c == "\\":
            j += 2
            continue
        if c in "\r\n":
            break
        if c == "`":
            return sql[i + 1 : j], j + 1
        j += 1
    raise fail(sql, i, "unterminated quoted identifier")


def _read_string(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    end = _string_end(sql, i, i)
    return Token("string", sql[i:end], i), end


def _read_name(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """A name, or a string with an r/b/rb/br prefix."""
    quote_at = _string_prefix(sql, i)
    if quote_at is not None:
        end = _string_end(sql, i, quote_at)
        return Token("string", sql[i:end], i), end
    end = _identifier_end(sql, i)
    return Token("word", sql[i:end], i), end


def _read_backtick(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    text, end = _backtick(sql, i)
    return Token("quoted", text, i), end


def _read_at(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """A ``@name`` parameter, a ``@@name`` system variable or the ``@`` of a ``@{…}`` hint."""
    nxt = sql[i + 1 : i + 2]
    if nxt == "@":
        if sql[i + 2 : i + 3] not in IDENT_START:  # a name: not "@@0x1F" (found by the fuzz)
            raise fail(sql, i, "'@@' must be followed by a system variable name")
        end = _identifier_end(sql, i + 2)
        return Token("sysvar", sql[i + 2 : end], i), end
    if nxt == "{":
        return Token("hint", "@", i), i + 1
    if nxt and nxt in IDENT_START:
        end = _identifier_end(sql, i + 1)
        return Token("param", sql[i + 1 : end], i), end
    if nxt == "`":
        text, end = _backtick(sql, i + 1)
        return Token("param", text, i), end
    raise fail(sql, i, "'@' must be followed by a parameter name")


def _read_dollar(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """``$`` is punctuation; before a digit, a PostgreSQL placeholder, refused."""
    if sql[i + 1 : i + 2] in DIGITS:
        end = number_end(sql, i + 1)
        raise fail(
            sql,
            i,
            f"{sql[i:end]} is a PostgreSQL-dialect placeholder, and this policy's statements "
            "are GoogleSQL (spanner.dialect: googlesql, the default): write @name, or set "
            "spanner.dialect: postgresql for a PostgreSQL-dialect database",
        )
    return Token("punct", "$", i), i + 1


_LEXICON = Lexicon(
    line_comments=("--", "#"),
    line_end=re.compile(r"[\r\n]"),  # ZetaSQL: a comment ends at \r, \n or \r\n
    nested_comments=False,
    readers={
        **dict.fromkeys(IDENT_START, _read_name),
        "'": _read_string,
        '"': _read_string,
        "`": _read_backtick,
        "@": _read_at,
        "$": _read_dollar,
    },
)


def _tokenize(sql: str) -> list[Token]:
    return scan(sql, _LEXICON)


def _skip_hint(tokens: list[Token], i: int) -> int:
    """If ``@{…}`` starts at ``i``, the index past its closing brace; else ``i``."""
    if i < len(tokens) and tokens[i].kind == "hint":
        depth = 0
        for j in range(i + 1, len(tokens)):
            if tokens[j].is_punct("{"):
                depth += 1
            elif tokens[j].is_punct("}"):
                depth -= 1
                if depth == 0:
                    return j + 1
        return len(tokens)
    return i


def _kind(sql: str, tokens: list[Token]) -> Literal["query", "dml"]:
    start = _skip_hint(tokens, 0)
    if start >= len(tokens):
        raise SqlProblem("empty statement: only a hint")
    first = tokens[start]
    word = first.text.upper() if first.kind == "word" else None
    if word in _QUERY_START or first.is_punct("("):
        return "query"
    if word in _DML_START:
        return "dml"
    allowed = (
        "only a query (SELECT, WITH or '(') or DML (INSERT, UPDATE, DELETE) can be whitelisted"
    )
    if word in _DDL:
        raise fail(sql, first.pos, f"DDL ({word}) is refused: {allowed}")
    shown = first.text if first.kind in ("word", "punct") else first.kind
    raise fail(sql, first.pos, f"{shown!r} does not start a query or DML: {allowed}")


def _name_at(tokens: list[Token], i: int) -> tuple[str | None, int]:
    """A dotted table name starting at ``i`` (words or quoted identifiers) and the index past it."""
    parts: list[str] = []
    j = i
    while j < len(tokens) and tokens[j].kind in ("word", "quoted"):
        parts.append(tokens[j].text)
        dotted = j + 2 < len(tokens) and tokens[j + 1].is_punct(".")
        if dotted and tokens[j + 2].kind in ("word", "quoted"):
            j += 2
        else:
            j += 1
            break
    return (".".join(parts) if parts else None), j


def _from_item(tokens: list[Token], i: int) -> tuple[str | None, int]:
    """A table name in a FROM/JOIN item at ``i``, skipping subqueries, UNNEST and TVF calls."""
    if i >= len(tokens) or tokens[i].is_word("UNNEST", "SELECT", "LATERAL"):
        return None, i
    name, j = _name_at(tokens, i)
    if name is None or (j < len(tokens) and tokens[j].is_punct("(")):
        return None, i
    return name, j


def _comma_items(tokens: list[Token], j: int) -> tuple[list[str], int]:
    """Further tables of a comma join after the FROM item that ended at ``j``."""
    names: list[str] = []
    while True:
        j = _skip_hint(tokens, j)
        if j < len(tokens) and tokens[j].is_word("AS"):
            j += 1
        if j < len(tokens) and tokens[j].kind in ("word", "quoted") and not (
            tokens[j].kind == "word" and tokens[j].text.upper() in _CLAUSE_WORDS
        ):
            j += 1  # an alias
        if not (j < len(tokens) and tokens[j].is_punct(",")):
            return names, j
        name, end = _from_item(tokens, j + 1)
        if name is None:
            return names, j + 1
        names.append(name)
        j = end


def _cte_names(tokens: list[Token]) -> set[str]:
    names = set()
    for k in range(1, len(tokens) - 2):
        before, this = tokens[k - 1], tokens[k]
        if (
            (before.is_word("WITH", "RECURSIVE") or before.is_punct(","))
            and this.kind in ("word", "quoted")
            and tokens[k + 1].is_word("AS")
            and tokens[k + 2].is_punct("(")
        ):
            names.add(this.text.upper())
    return names


def _tables(tokens: list[Token]) -> tuple[str, ...]:
    found: list[str] = []
    openers: list[Token | None] = []  # for each open paren, the token before it
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        prev = tokens[i - 1] if i > 0 else None
        names: list[str] = []
        nxt = i + 1
        if tok.is_punct("("):
            openers.append(prev)
        elif tok.is_punct(")"):
            if openers:
                openers.pop()
        elif tok.is_word("FROM"):
            opener = openers[-1] if openers else None
            in_extract = opener is not None and opener.is_word("EXTRACT")
            after_delete = prev is not None and prev.is_word("DELETE")
            distinct = prev is not None and prev.is_word("DISTINCT")
            if not (in_extract or distinct or after_delete):
                name, nxt = _from_item(tokens, i + 1)
                if name is not None:
                    more, nxt = _comma_items(tokens, nxt)
                    names = [name, *more]
                else:
                    nxt = i + 1
        elif tok.is_word("JOIN"):
            name, nxt = _from_item(tokens, i + 1)
            names = [name] if name else []
            nxt = max(nxt, i + 1)
        elif tok.is_word("INSERT"):
            j = i + 1
            if j < len(tokens) and tokens[j].is_word("OR"):
                j += 2
            if j < len(tokens) and tokens[j].is_word("INTO"):
                j += 1
            name, nxt = _name_at(tokens, j)
            names = [name] if name else []
            nxt = max(nxt, i + 1)
        elif tok.is_word("UPDATE") and not (prev is not None and prev.is_word("OR", "DO")):
            name, nxt = _name_at(tokens, i + 1)
            names = [name] if name else []
            nxt = max(nxt, i + 1)
        elif tok.is_word("DELETE"):
            j = i + 2 if i + 1 < len(tokens) and tokens[i + 1].is_word("FROM") else i + 1
            name, nxt = _name_at(tokens, j)
            names = [name] if name else []
            nxt = max(nxt, i + 1)
        elif tok.is_word("INTO"):
            name, nxt = _name_at(tokens, i + 1)
            names = [name] if name else []
            nxt = max(nxt, i + 1)
        found.extend(names)
        # Parens skipped over by a name read are balanced by construction (names hold none).
        i = nxt
    ctes = _cte_names(tokens)
    return tuple(dict.fromkeys(t for t in found if t.upper() not in ctes))


def statement_tokens(
    sql: str, dialect: Dialect = GOOGLESQL, params: Sequence[str] = ()
) -> list[Token]:
    """The tokens of one statement (comments dropped, a final ``;`` cut off); SqlProblem as
    ``scan_sql`` raises it for characters, tokens and a second statement. ``params``: the
    declared parameters in order, which a PostgreSQL-dialect ``$k`` names (``pgsql``)."""
    refuse_unclear_characters(sql)
    if dialect == POSTGRESQL:
        from gateway.policy.pgsql import tokenize

        tokens = tokenize(sql, params)
    else:
        tokens = _tokenize(sql)
    for index, tok in enumerate(tokens):
        if tok.is_punct(";"):
            if index + 1 < len(tokens):
                extra = tokens[index + 1]
                raise fail(
                    sql, extra.pos, "more than one statement: nothing but comments may follow ';'"
                )
            return tokens[:index]
    return tokens


def scan_sql(sql: str, dialect: Dialect = GOOGLESQL, params: Sequence[str] = ()) -> SqlInfo:
    """Tokenize one statement of ``dialect``; raises SqlProblem when it cannot be whitelisted.
    ``params``: the query's declared parameters in order (PostgreSQL's ``$k`` names the k-th)."""
    tokens = statement_tokens(sql, dialect, params)
    if not tokens:
        raise SqlProblem("empty statement")
    kind = _kind(sql, tokens)
    if dialect == POSTGRESQL:
        returning = kind == "dml" and any(t.is_word("RETURNING") for t in tokens)
    else:
        returning = kind == "dml" and any(
            a.is_word("THEN") and b.is_word("RETURN") for a, b in itertools.pairwise(tokens)
        )
    params = tuple(dict.fromkeys(t.text for t in tokens if t.kind == "param"))
    return SqlInfo(params=params, kind=kind, returning=returning, tables=_tables(tokens))
