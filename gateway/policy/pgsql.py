"""The tokenizer of Spanner's PostgreSQL dialect, for ``sqlscan`` (``spanner.dialect: postgresql``):
its readers, in a ``Lexicon`` for the scanning loop both dialects share (``sqltoken.scan``).

It reads a statement as PostgreSQL's lexer does, so that text inside literals, quoted identifiers
and comments is never taken for a parameter, a keyword or a statement separator:

- ``'…'`` strings, a quote inside doubled (``''``); a backslash is an ordinary character
  (standard-conforming strings: ``'a\\'`` is the two characters ``a\\``, measured on the
  emulator); ``E'…'`` strings also take backslash escapes (``E'it\\'s'``); ``B'…'``, ``X'…'`` and
  ``N'…'`` strings read as ``'…'``. A ``'…'`` string followed, after whitespace or comments,
  by another ``'…'`` is refused: PostgreSQL continues a string across a line break
  (``'a'`` newline ``'b'`` is ``'ab'``) and the gateway does not read that. ``U&'…'`` and
  ``U&"…"`` (Unicode escapes, with ``UESCAPE``) are refused: the gateway does not read them;
- dollar quoting: ``$$…$$`` and ``$tag$…$tag$`` (a tag is a name without ``$``), nothing
  escaped inside;
- ``"…"`` quoted identifiers (``""`` inside for a quote; never empty): a ``quoted`` token,
  unquoted, its case kept;
- ``--`` comments to the end of the line, ``/* … */`` comments, which nest (``/* a /* b */ c */``
  is one comment);
- whitespace is space, tab and line feed only; any other character Python calls whitespace
  (U+00A0, U+2003, U+3000, …) is refused outside quoted text and comments: Spanner reads it as
  a letter of a name;
- unquoted names (letters, ``_``, any non-ASCII character; then also digits and ``$``) are folded
  to lower case (ASCII letters only), as PostgreSQL folds them: ``SELECT OrderId`` returns a
  column named ``orderid``;
- ``$k`` (k from 1) is the k-th declared parameter: its token carries that parameter's name, or
  ``$k`` itself when fewer are declared (the loader refuses it, naming both). A ``$k`` followed
  by a letter is refused, as PostgreSQL refuses it;
- ``@name`` is GoogleSQL's parameter: refused, naming the ``$k`` to write instead. ``@`` before
  anything but a name is an operator, as ``#`` is (PostgreSQL has no ``#`` comments);
- numbers are digits, an optional ``.`` and digits, an optional exponent with digits; a number
  followed by a letter, ``_`` or another character of a name is refused as Spanner refuses it
  ("trailing junk after numeric literal", measured on the emulator): ``1x``, ``1e``, ``1e-``,
  ``1.e``, ``0x1F`` (no hexadecimal numbers), ``1_000`` (no digit separators).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.policy.sqltoken import (
    DIGITS,
    IDENT_CHARS,
    IDENT_START,
    SPACE,
    Lexicon,
    Token,
    fail,
    scan,
    unicode_space,
)

__all__ = ["quoted_end", "tokenize"]

_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN_PREFIXES = frozenset("bBxXnN")  # B'0101', X'1F', N'text': read as '…'
_MAX_PLACEHOLDER_DIGITS = 6


def _ident_start(c: str) -> bool:
    return c in IDENT_START or c >= "\x80"


def _ident_char(c: str) -> bool:
    return c in IDENT_CHARS or c == "$" or c >= "\x80"


def _word_end(sql: str, i: int) -> int:
    while i < len(sql) and _ident_char(sql[i]):
        problem = unicode_space(sql, i)
        if problem is not None:
            raise problem
        i += 1
    return i


_LINE_END = re.compile(r"[\r\n]")


def _continued_string(sql: str, end: int) -> int | None:
    """Where a ``'`` opens after the ``'…'`` string ending at ``end`` with only whitespace and
    comments between, or None. PostgreSQL reads ``'a'`` + line break + ``'b'`` as ONE string
    (``'ab'``, and an E'' string continued keeps its backslash escapes); the gateway does not
    read such continuations, it refuses them."""
    i = end
    while i < len(sql):
        if sql[i] in SPACE:
            i += 1
        elif sql.startswith("--", i):
            nl = _LINE_END.search(sql, i)
            if nl is None:
                return None
            i = nl.end()
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close < 0:
                return None
            i = close + 2
        else:
            return i if sql[i] == "'" else None
    return None


def _string(sql: str, start: int, quote_at: int, *, backslash: bool) -> int:
    """The index past the ``'``-quoted literal at ``quote_at``; one continued by another string
    on a following line is refused (see ``_continued_string``)."""
    end = _quoted_end(sql, start, quote_at, backslash=backslash)
    nxt = _continued_string(sql, end)
    if nxt is not None:
        raise fail(
            sql,
            nxt,
            "a string literal followed by another one after a line break is one string "
            "continued in PostgreSQL ('a'<newline>'b' is 'ab'); the gateway does not read "
            "continued strings: write the literal as one string",
        )
    return end


def quoted_end(text: str, quote_at: int, quote: str = "'", *, backslash: bool = False) -> int:
    """The index past the PostgreSQL ``quote``-quoted text opening at ``quote_at`` (a doubled
    quote inside is one quote; with ``backslash``, an E'' string, ``\\`` escapes the next
    character), or -1 when it never closes. Also ``split_statements``' reader of PG files."""
    i = quote_at + 1
    while i < len(text):
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if text.startswith(quote * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    return -1


def _quoted_end(sql: str, start: int, quote_at: int, *, backslash: bool) -> int:
    """The index past the ``'``-quoted literal opening at ``quote_at`` (``quoted_end``)."""
    end = quoted_end(sql, quote_at, backslash=backslash)
    if end < 0:
        raise fail(sql, start, "unterminated string literal")
    return end


def _identifier(sql: str, i: int) -> tuple[str, int]:
    """The unquoted text of the ``"``-quoted identifier at ``i`` and the index past it."""
    j = i + 1
    parts: list[str] = []
    while j < len(sql):
        end = sql.find('"', j)
        if end < 0:
            break
        parts.append(sql[j:end])
        if sql.startswith('""', end):
            parts.append('"')
            j = end + 2
            continue
        text = "".join(parts)
        if not text:
            raise fail(sql, i, 'a quoted identifier cannot be empty ("")')
        return text, end + 1
    raise fail(sql, i, "unterminated quoted identifier")


def _dollar_tag(sql: str, i: int) -> str | None:
    """The delimiter ``$tag$`` (or ``$$``) starting at ``i``, or None when none starts there."""
    j = i + 1
    if j < len(sql) and _ident_start(sql[j]):
        j += 1
        while j < len(sql) and (sql[j] in IDENT_CHARS or sql[j] >= "\x80"):
            j += 1
    return sql[i : j + 1] if sql.startswith("$", j) else None


def _placeholder(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    end = i + 1
    while end < len(sql) and sql[end] in DIGITS:
        end += 1
    if end < len(sql) and _ident_char(sql[end]):
        raise fail(sql, i, f"trailing junk after parameter {sql[i:end]}")
    digits = sql[i + 1 : end]
    if len(digits.lstrip("0")) > _MAX_PLACEHOLDER_DIGITS:
        raise fail(sql, i, f"{sql[i:end]} is no parameter number a policy can declare")
    k = int(digits)
    if k == 0:
        raise fail(
            sql, i, f"{sql[i:end]} is no parameter: placeholders start at $1 (the first declared)"
        )
    name = params[k - 1] if 1 <= k <= len(params) else f"${k}"
    return Token("param", name, i), end


def _at_name(sql: str, i: int, params: Sequence[str]) -> Exception:
    name = sql[i + 1 : _word_end(sql, i + 1)]
    hint = ""
    for k, declared in enumerate(params, start=1):
        if declared == name:
            hint = f": write ${k} ({name} is declared parameter number {k})"
            break
    return fail(
        sql,
        i,
        f"@{name} is a GoogleSQL parameter; a PostgreSQL-dialect statement refers to its "
        f"parameters as $1..$N, in the order the query declares them{hint} (an operator "
        "followed by a name: put a space after it)",
    )


def _read_name(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """A name, folded; or a string with a one-letter prefix (``E'…'``, ``B'…'``, ``X'…'``,
    ``N'…'``); ``U&`` before a quote is refused."""
    c = sql[i]
    if sql.startswith("'", i + 1):
        if c in "eE":
            end = _string(sql, i, i + 1, backslash=True)
            return Token("string", sql[i:end], i), end
        if c in _PLAIN_PREFIXES:
            end = _string(sql, i, i + 1, backslash=False)
            return Token("string", sql[i:end], i), end
    if c in "uU" and sql.startswith("&", i + 1) and sql[i + 2 : i + 3] in ("'", '"'):
        raise fail(
            sql,
            i,
            "U& strings and identifiers (Unicode escapes) are not read by the gateway: "
            "write the characters themselves, or an E'' string with \\u escapes",
        )
    end = _word_end(sql, i)
    return Token("word", sql[i:end].translate(_LOWER), i), end


def _read_string(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    end = _string(sql, i, i, backslash=False)
    return Token("string", sql[i:end], i), end


def _read_identifier(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    text, end = _identifier(sql, i)
    return Token("quoted", text, i), end


def _read_dollar(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """A ``$k`` placeholder or a dollar-quoted string."""
    if sql[i + 1 : i + 2] in DIGITS:
        return _placeholder(sql, i, params)
    tag = _dollar_tag(sql, i)
    if tag is None:
        raise fail(sql, i, "'$' must start a parameter ($1) or a dollar-quoted string ($$…$$)")
    close = sql.find(tag, i + len(tag))
    if close < 0:
        raise fail(sql, i, f"unterminated dollar-quoted string (no closing {tag})")
    end = close + len(tag)
    return Token("string", sql[i:end], i), end


def _read_at(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """``@`` before a name is GoogleSQL's parameter, refused; before anything else, an operator."""
    if i + 1 < len(sql) and _ident_start(sql[i + 1]):
        raise _at_name(sql, i, params)
    return Token("punct", "@", i), i + 1


_LEXICON = Lexicon(
    line_comments=("--",),
    line_end=re.compile(r"[\r\n]"),  # PostgreSQL's lexer: a comment ends at \r or \n
    nested_comments=True,
    hints=True,  # /*@ ... */ (sqltoken._hint_end)
    readers={
        **dict.fromkeys(IDENT_START, _read_name),
        "'": _read_string,
        '"': _read_identifier,
        "$": _read_dollar,
        "@": _read_at,
    },
    non_ascii=_read_name,  # any non-ASCII character starts a name (a Unicode space was refused)
    strict_numbers=True,  # "1x", "1e", "0x1F", "1_000": trailing junk (sqltoken.strict_number_end)
)


def tokenize(sql: str, params: Sequence[str]) -> list[Token]:
    """The tokens of ``sql`` read as Spanner's PostgreSQL dialect (see the module doc); the
    characters were checked by the caller."""
    return scan(sql, _LEXICON, params)
