"""What the SQL readers of both dialects share: tokens, the problem they raise, where it is,
and the one loop that reads a statement into tokens (``scan``).

``sqlscan`` reads GoogleSQL, ``pgsql`` reads Spanner's PostgreSQL dialect; both hand the rest of
the policy package the same ``Token`` list, so the select list, pagination and grants read either
dialect's statements alike. ``Dialect`` names the two.

``scan`` reads what the two dialects read alike: whitespace (space, tab and line feed only; any
other space refused outside quoted text, ``unicode_space``), comments (``--`` to the end of the
line, ``/* … */``), numbers and single-character punctuation. What differs is a dialect's
``Lexicon``: which further characters start a comment to the end of the line (GoogleSQL's ``#``)
and which end it, whether ``/* … */`` comments nest (PostgreSQL), how strictly a number ends
(PostgreSQL refuses a number followed by a name's character, ``strict_number_end``), and a reader
for each character that starts a token of the dialect's own (names, literals, quoted identifiers,
parameters).

Defence in depth against a token read differently here and in Spanner: a token whose text is not
quoted (every kind but ``QUOTED_TEXT``) may neither hold a comment marker (``--``, ``/*``, ``*/``,
and the dialect's other line-comment markers: GoogleSQL's ``#``) nor touch one with its first or
last character (``*/*``): ``scan`` refuses it (``glued_comment_marker``). So ``@`a--b` `` (a
GoogleSQL parameter quoted with backticks) and an operator glued to a comment are refused, and no
reader can swallow a comment marker into a name, a number or an operator unnoticed.

Before tokenizing, both refuse any character a reader and Spanner may not see alike: control
characters (Unicode Cc) other than tab and line feed (so CR, VT, FF, NEL), format characters (Cf:
bidirectional overrides, zero-width characters), line and paragraph separators (U+2028, U+2029)
and lone surrogates (``refuse_unclear_characters``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DIALECTS",
    "DIGITS",
    "GOOGLESQL",
    "IDENT_CHARS",
    "IDENT_START",
    "POSTGRESQL",
    "QUOTED_TEXT",
    "Dialect",
    "Lexicon",
    "Reader",
    "SqlInfo",
    "SPACE",
    "SqlProblem",
    "Token",
    "TokenKind",
    "comment_markers",
    "fail",
    "glued_comment_marker",
    "number_end",
    "refuse_unclear_characters",
    "scan",
    "strict_number_end",
    "unicode_space",
]

Dialect = Literal["googlesql", "postgresql"]
GOOGLESQL: Dialect = "googlesql"
POSTGRESQL: Dialect = "postgresql"
DIALECTS: tuple[Dialect, ...] = (GOOGLESQL, POSTGRESQL)

IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
IDENT_CHARS = IDENT_START | frozenset("0123456789")
DIGITS = frozenset("0123456789")
_NOT_PLAIN = re.compile(r"[^\t\n\x20-\x7e]")  # the characters to look at more closely
_REFUSED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_CONTROL_NAMES = {
    "\r": "CARRIAGE RETURN",
    "\x0b": "LINE TABULATION",
    "\x0c": "FORM FEED",
    "\x85": "NEXT LINE",
    "\x00": "NULL",
}

TokenKind = Literal["word", "quoted", "string", "number", "param", "sysvar", "hint", "punct"]
QUOTED_TEXT: frozenset[TokenKind] = frozenset({"quoted", "string"})
"""The kinds of token whose text is quoted (string literals, quoted identifiers): a comment marker
inside them is text. Any other token holding or touching one is refused (``scan``)."""


class SqlProblem(ValueError):
    """A statement the gateway refuses to whitelist; ``offset`` is where, when known."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class SqlInfo:
    """``params``: the declared parameters the statement uses, in order of first appearance
    (GoogleSQL: ``@name`` as written; PostgreSQL: ``$k`` read as the k-th declared parameter's
    name, and as ``$k`` itself when fewer are declared)."""

    params: tuple[str, ...]
    kind: Literal["query", "dml"]
    returning: bool
    tables: tuple[str, ...]


@dataclass(frozen=True)
class Token:
    # A word as written (PostgreSQL: folded to lower case, as the dialect folds unquoted names),
    # a quoted identifier unquoted, a parameter's name, a punct char.
    kind: TokenKind
    text: str
    pos: int

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words

    def is_punct(self, char: str) -> bool:
        return self.kind == "punct" and self.text == char


def _where(sql: str, pos: int) -> str:
    line = sql.count("\n", 0, pos) + 1
    column = pos - (sql.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}"


def fail(sql: str, pos: int, message: str) -> SqlProblem:
    """A SqlProblem at ``pos`` of ``sql`` (its line and column appended to ``message``)."""
    return SqlProblem(f"{message} (SQL {_where(sql, pos)})", offset=pos)


def refuse_unclear_characters(sql: str) -> None:
    """Raise SqlProblem at the first character that is not plain text and whitespace (see above)."""
    for m in _NOT_PLAIN.finditer(sql):
        c = m.group(0)
        category = unicodedata.category(c)
        if category in _REFUSED:
            name = _CONTROL_NAMES.get(c) or unicodedata.name(c, "a control character")
            raise fail(
                sql,
                m.start(),
                f"U+{ord(c):04X} ({name}) is not allowed in policy SQL: the only control "
                "characters allowed are tab and line feed (and no format or line-separator "
                "characters), so that the gateway reads the statement as Spanner does; in a "
                "string literal, write an escape such as \\r",
            )


SPACE = frozenset(" \t\n\r\f\v")  # the only whitespace either dialect is read with


def unicode_space(sql: str, i: int) -> SqlProblem | None:
    """If ``sql[i]`` is whitespace to Python but not ASCII whitespace (U+00A0, U+2000-U+200A,
    U+202F, U+205F, U+3000, ...), the problem to raise: outside quoted text such a character is
    refused, because the readers cannot know that Spanner sees it alike (Spanner's PostgreSQL
    reader takes it for a letter of a name: ``AS \u2003$1`` names a table alias ``\u2003$1``)."""
    c = sql[i]
    if c in SPACE or not c.isspace():
        return None
    name = unicodedata.name(c, "a space character")
    return fail(
        sql,
        i,
        f"U+{ord(c):04X} ({name}) is not allowed outside quoted text in policy SQL: write a "
        "plain space, tab or line feed (Spanner may read any other space as part of a name)",
    )


def number_end(sql: str, i: int) -> int:
    """The index past the number starting at ``i`` (letters, digits, dots, a signed exponent).

    An exponent's sign belongs to the number only when a digit follows it, and never in a hex
    number (``0x``, ``0X``): Spanner reads ``0X1e--`` and ``1.e--`` as a number (and, for the
    latter, an alias) followed by a comment, so the gateway must not take that ``-`` into the
    number and read the comment as SQL."""
    j = i
    hexa = sql[i : i + 2] in ("0x", "0X")
    while j < len(sql) and (sql[j] in IDENT_CHARS or sql[j] == "."):
        if (
            not hexa
            and sql[j] in "eE"
            and sql[j + 1 : j + 2] in ("+", "-")
            and sql[j + 2 : j + 3] in DIGITS
        ):
            j += 3
            continue
        j += 1
    return j


def _junk_end(sql: str, j: int) -> int:
    while j < len(sql) and (sql[j] in IDENT_CHARS or sql[j] == "$" or sql[j] >= "\x80"):
        j += 1
    return j


def _starts_name(c: str) -> bool:
    return c in IDENT_START or (c >= "\x80" and not c.isspace())


def strict_number_end(sql: str, i: int) -> int:
    """The index past the number starting at ``i``, read as Spanner's PostgreSQL dialect reads it:
    digits, an optional ``.`` and digits (or ``.`` and digits), an optional exponent (``e``, an
    optional sign, digits). A number followed by a character that starts a name (a letter, ``_``,
    any non-ASCII character but a space) is refused, as Spanner refuses it ("trailing junk after
    numeric literal"): ``1x``, ``1e``, ``1e-``, ``1.e``, ``0x1F``, ``1_000``. ``1..2`` is ``1``
    then ``..`` (PostgreSQL's reading; Spanner then refuses the syntax)."""
    n = len(sql)
    j = i
    while j < n and sql[j] in DIGITS:
        j += 1
    if sql.startswith(".", j) and not sql.startswith("..", j):
        j += 1
        while j < n and sql[j] in DIGITS:
            j += 1
    if j < n and sql[j] in "eE":
        k = j + 1
        if sql[k : k + 1] in ("+", "-"):
            k += 1
        if sql[k : k + 1] in DIGITS:
            j = k
            while j < n and sql[j] in DIGITS:
                j += 1
        else:  # an exponent without digits: "1e", "1e-", "1e--" (Spanner: trailing junk)
            raise _trailing_junk(sql, i, max(_junk_end(sql, j), k))
    if j < n and _starts_name(sql[j]):
        raise _trailing_junk(sql, i, _junk_end(sql, j))
    return j


def _trailing_junk(sql: str, i: int, end: int) -> SqlProblem:
    return fail(
        sql,
        i,
        f"trailing junk after numeric literal {sql[i:end]!r}: Spanner's PostgreSQL dialect "
        "refuses a number followed by a letter, '_' or another character of a name (no "
        "hexadecimal 0x1F, no digit separators 1_000, an exponent needs digits: 1e5); put a "
        "space before a name (1 AS x)",
    )


def comment_markers(line_comments: Sequence[str]) -> tuple[str, ...]:
    """What starts or ends a comment in a dialect whose line comments start with
    ``line_comments``: those, ``/*`` and ``*/``."""
    return tuple(dict.fromkeys(("--", "/*", "*/", *line_comments)))


def glued_comment_marker(
    sql: str, start: int, end: int, markers: Sequence[str]
) -> tuple[str, int] | None:
    """A comment marker (and where it starts) that overlaps ``sql[start:end]``: one inside it or
    one that its first or last character begins or ends (``*`` before ``/``); else None."""
    for marker in markers:
        at = sql.find(marker, max(start - len(marker) + 1, 0), end + len(marker) - 1)
        if at >= 0:
            return marker, at
    return None


def _refuse_glued_marker(sql: str, start: int, end: int, markers: Sequence[str]) -> None:
    found = glued_comment_marker(sql, start, end, markers)
    if found is None:
        return
    marker, at = found
    inside = start <= at and at + len(marker) <= end
    where = "holds" if inside else "touches"
    listed = ", ".join(markers)
    raise fail(
        sql,
        at,
        f"{sql[start:end]!r} {where} the comment marker {marker!r}: outside string literals, "
        f"quoted names and comments, a comment marker ({listed}) may not be part of a name, "
        "parameter, number or operator nor touch one, so that no reader (the gateway's or "
        "Spanner's) can take a comment for SQL or SQL for a comment; put a space between, or "
        "rename",
    )


Reader = Callable[[str, int, Sequence[str]], tuple[Token, int]]
"""Reads the token starting at index ``i`` of ``sql`` (``params``: the declared parameters, in
order): that token and the index past it; raises SqlProblem for text the dialect refuses."""


@dataclass(frozen=True, slots=True)
class Lexicon:
    """How one dialect is read where the two differ (``scan`` reads the rest alike).

    ``line_comments``: what starts a comment to the end of the line; ``line_end``: what ends it
    (the terminator is part of the comment). ``nested_comments``: ``/* a /* b */ c */`` is one
    comment. ``readers``: for an ASCII character that starts a token of the dialect's own, its
    reader; ``non_ascii``: the reader of a token starting with a character past U+007F that is
    not a space (None: a ``punct`` token, as is any character without a reader).
    ``strict_numbers``: numbers end as ``strict_number_end`` reads them (PostgreSQL), rather than
    at the first character that is neither a name's nor ``.`` (``number_end``, GoogleSQL).

    ``scan`` asks ``readers`` right after whitespace, so no reader may take a character that
    starts anything ``scan`` reads itself (whitespace, a comment, a number): checked here, so
    that a reader can never hide a comment (or a comment's end) from the gateway."""

    line_comments: tuple[str, ...]
    line_end: re.Pattern[str]
    nested_comments: bool
    readers: Mapping[str, Reader]
    non_ascii: Reader | None = None
    hints: bool = False  # ``/*@ … */`` outside a comment is a statement hint, not a comment
    strict_numbers: bool = False

    def __post_init__(self) -> None:
        scanned = SPACE | DIGITS | {".", "/", "-"} | {c[:1] for c in self.line_comments}
        for char in self.readers:
            if len(char) != 1 or not char.isascii() or char in scanned:
                raise ValueError(
                    f"{char!r} cannot have a reader: one ASCII character that scan does not "
                    "read itself (whitespace, a digit, '.', a comment's first character)"
                )


def _comment_end(sql: str, i: int, *, nested: bool) -> int:
    """The index past the ``/* … */`` comment opening at ``i`` (``nested``: inner ones count)."""
    depth, j = 1, i + 2
    while depth:
        closes = sql.find("*/", j)
        if closes < 0:
            raise fail(sql, i, "unterminated comment")
        opens = sql.find("/*", j) if nested else -1
        if 0 <= opens < closes:  # "/*/" opens one: PostgreSQL reads the "/*" first
            depth, j = depth + 1, opens + 2
        else:
            depth, j = depth - 1, closes + 2
    return j


_HINT_BODY = re.compile(r"[A-Za-z0-9_.,= \t\n]*")


def _hint_end(sql: str, i: int) -> int:
    """The index past the statement hint ``/*@ … */`` opening at ``i`` (PostgreSQL dialect).

    Spanner does not read a hint as a comment: it reads the tokens inside, and the first
    ``*/`` outside them ends it, so ``/*@ x=1 -- */ WHERE TenantId = $1 \n*/`` hides the filter
    from Spanner (``--`` comments out the first ``*/``) while a comment reader sees it. A hint
    is therefore read only when it holds nothing but ``name=value`` pairs (letters, digits,
    ``_ . , =`` and spaces), where both readings agree; anything else is refused."""
    close = sql.find("*/", i + 3)
    if close < 0:
        raise fail(sql, i, "unterminated statement hint")
    if _HINT_BODY.fullmatch(sql, i + 3, close) is None:
        raise fail(
            sql,
            i,
            "a statement hint (/*@ ... */) may hold only name=value pairs (letters, digits, "
            "_ . , = and spaces): Spanner reads what is inside a hint as SQL, not as a comment",
        )
    return close + 2


def scan(sql: str, lexicon: Lexicon, params: Sequence[str] = ()) -> list[Token]:
    """The tokens of ``sql`` read by ``lexicon`` (whitespace and comments dropped); ``params``
    goes to the readers. The caller checked the characters (``refuse_unclear_characters``).
    A token that is not ``QUOTED_TEXT`` and holds or touches a comment marker is refused."""
    tokens: list[Token] = []
    readers, line_comments = lexicon.readers, lexicon.line_comments
    markers = comment_markers(line_comments)
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in SPACE:
            i += 1
            continue
        start = i
        reader = readers.get(c)
        if reader is not None:  # a token of the dialect's own
            token, i = reader(sql, i, params)
        elif c.isspace():
            problem = unicode_space(sql, i)
            assert problem is not None
            raise problem
        elif sql.startswith(line_comments, i):
            line_end = lexicon.line_end.search(sql, i)
            i = n if line_end is None else line_end.end()
            continue
        elif sql.startswith("/*", i):
            if lexicon.hints and sql.startswith("/*@", i):
                i = _hint_end(sql, i)
            else:
                i = _comment_end(sql, i, nested=lexicon.nested_comments)
            continue
        elif c in DIGITS or (c == "." and sql[i + 1 : i + 2] in DIGITS):
            i = strict_number_end(sql, i) if lexicon.strict_numbers else number_end(sql, i)
            token = Token("number", sql[start:i], start)
        elif c >= "\x80" and lexicon.non_ascii is not None:
            token, i = lexicon.non_ascii(sql, i, params)
        else:
            token = Token("punct", c, i)
            i += 1
        if token.kind not in QUOTED_TEXT:
            _refuse_glued_marker(sql, start, i, markers)
        tokens.append(token)
    return tokens
