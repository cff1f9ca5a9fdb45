"""A deterministic fuzz of the policy SQL reader against a reference tokenisation written here.

Statements are glued together from fragments (quotes, comment markers, parameters, numbers,
semicolons, prefixes, Unicode letters and spaces), most of them nonsense. Whenever the gateway's
reader accepts one (``statement_tokens``), a reference tokenizer (regular expressions, written
independently of ``sqltoken``/``sqlscan``/``pgsql``, from the dialects' lexical rules) must read
it alike:

- it reads it without error (no unterminated quote or comment the gateway missed);
- the same string literals, quoted names and parameters start at the same offsets, and the
  parameters are the same names in the same order;
- the statement ends at the same ``;`` (if any) and nothing but comments follows it;
- outside its comments and quoted text, no comment marker is left (``--``, ``/*``, ``*/``, and
  GoogleSQL's ``#``): none is part of, or touches, another token.

The run is bounded (``CASES`` per dialect, a fixed seed; a few seconds). For a longer run:
``SPANGATE_SQL_FUZZ_CASES=500000 .venv/bin/python -m pytest -n 0 tests/policy/test_sqlscan_fuzz.py``
(``SPANGATE_SQL_FUZZ_SEED`` changes the seed).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

import pytest

from gateway.policy.sqlscan import SqlProblem, statement_tokens
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect, Token

CASES = int(os.environ.get("SPANGATE_SQL_FUZZ_CASES", "4000"))
SEED = int(os.environ.get("SPANGATE_SQL_FUZZ_SEED", "20240607"))
DECLARED = ("p", "q")


class RefError(Exception):
    """The reference refuses the text (an unterminated quote, a character it does not read)."""


@dataclass(frozen=True)
class Ref:
    kind: str  # string, quoted, param, comment, space, semi, other
    text: str
    pos: int
    name: str = ""  # a parameter's name


# --- the reference tokenizers ---------------------------------------------------------------------

_NAME = r"[A-Za-z_\u0080-\U0010ffff]"
_NAME_CONT = r"[A-Za-z0-9_\u0080-\U0010ffff]"

_GOOGLESQL = re.compile(
    r"""
    (?P<space>[ \t\n]+)
  | (?P<comment>(?:--|\#)[^\r\n]*|/\*.*?\*/)
  | (?P<string>(?:[rR][bB]?|[bB][rR]?)?
        (?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
          |'(?:\\.|[^'\\\r\n])*'|"(?:\\.|[^"\\\r\n])*"))
  | (?P<quoted>`(?:\\.|[^`\\\r\n])*`)
  | (?P<sysvar>@@[A-Za-z_][A-Za-z0-9_]*)
  | (?P<param>@[A-Za-z_][A-Za-z0-9_]*|@`(?:\\.|[^`\\\r\n])*`)
  | (?P<hint>@(?=\{))
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
        [A-Za-z0-9_.]*)  # glued to a name: Spanner refuses it, the gateway reads one token
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<unclosed>['"`]|/\*|@)
  | (?P<semi>;)
  | (?P<other>.)
    """,
    re.S | re.X,
)

_POSTGRESQL = re.compile(
    rf"""
    (?P<space>[ \t\n]+)
  | (?P<comment>--[^\r\n]*|/\*@[A-Za-z0-9_.,=\ \t\n]*\*/)
  | (?P<badhint>/\*@)
  | (?P<block>/\*)
  | (?P<string>[eE]'(?:\\.|''|[^'\\])*'|[bBxXnN]?'(?:''|[^'])*'
        |\$(?P<tag>(?:{_NAME}{_NAME_CONT}*)?)\$.*?\$(?P=tag)\$)
  | (?P<quoted>"(?:""|[^"])+")
  | (?P<param>\$[0-9]+(?!{_NAME_CONT}|\$))
  | (?P<number>(?:[0-9]+\.(?!\.)[0-9]*|[0-9]+|\.[0-9]+)(?:[eE][+-]?[0-9]+)?
        (?![A-Za-z_]|[^\x00-\x7f]))
  | (?P<junk>[0-9]|\.[0-9])  # a number followed by a name's character: Spanner refuses it
  | (?P<uescape>[uU]&['"])
  | (?P<unclosed>[eE]'|['"$])  # not a word E then a '' string: E'' did not close
  | (?P<word>{_NAME}(?:{_NAME_CONT}|\$)*)
  | (?P<atname>@{_NAME})
  | (?P<semi>;)
  | (?P<other>.)
    """,
    re.S | re.X,
)


def _nested_comment_end(sql: str, i: int) -> int:
    depth = 0
    for m in re.compile(r"/\*|\*/").finditer(sql, i):
        depth += 1 if m.group(0) == "/*" else -1
        if depth == 0:
            return m.end()
    raise RefError("unterminated comment")


def reference_tokens(sql: str, dialect: Dialect) -> list[Ref]:
    pattern = _GOOGLESQL if dialect == GOOGLESQL else _POSTGRESQL
    out: list[Ref] = []
    i = 0
    while i < len(sql):
        m = pattern.match(sql, i)
        assert m is not None and m.lastgroup is not None
        kind = m.lastgroup if m.lastgroup != "tag" else "string"
        if kind == "block":  # a PostgreSQL comment: they nest
            end = _nested_comment_end(sql, i)
            out.append(Ref("comment", sql[i:end], i))
            i = end
            continue
        if kind in ("unclosed", "badhint", "uescape", "atname", "junk"):
            raise RefError(f"{kind} at {i}")
        if sql[i].isspace() and sql[i] not in " \t\n":
            raise RefError(f"a space that is not ASCII at {i}")
        text = m.group(0)
        name = ""
        if kind == "param":
            if dialect == GOOGLESQL:
                name = text[2:-1] if text.startswith("@`") else text[1:]
            else:
                k = int(text[1:])
                if k == 0:
                    raise RefError("$0")
                name = DECLARED[k - 1] if k <= len(DECLARED) else f"${k}"
        out.append(Ref(kind, text, i, name))
        i = m.end()
    return out


def _masked(sql: str, refs: list[Ref]) -> str:
    """``sql`` with its comments and quoted text blanked out."""
    chars = list(sql)
    for ref in refs:
        if ref.kind in ("comment", "string", "quoted"):
            chars[ref.pos : ref.pos + len(ref.text)] = " " * len(ref.text)
    return "".join(chars)


# --- the fragments statements are made of --------------------------------------------------------

_COMMON = [
    " ", " ", " ", "\n", "\t", "SELECT ", "a", "x", "e", "E", "_", "1", "0", "5", ".", ".5",
    "1e5", "1e", "e-3", "0x1F", "1_0", "-", "+", "*", "/", "(", ")", ",", "=", ";", ";",
    "--", "/*", "*/", "-- c\n", "/* c */", "'", '"', "''", "'a;b'", "'--'", "'/*'", "\\",
    "@", "#", "$", "\u00e9", "\u2003", "\r",
]  # fmt: skip
_FRAGMENTS: dict[Dialect, list[str]] = {
    GOOGLESQL: [
        *_COMMON, "@p", "@q", "@p", "@@v", "@`p`", "@`a--b`", "@`a#b`", "`", "`x;y`", "`a--b`",
        "'''", '"""', "r", "b", "rb", "@{", "{", "}", "'\\''", '"#"', "# c\n", "$1",
    ],
    POSTGRESQL: [
        *_COMMON, "$1", "$2", "$1", "$10", "$0", "$$", "$t$", "$$;$$", "$t$--$t$", "E'",
        "E'\\''", "e'\\\\'", "X'", "N'", "U&", "&", '""', '"a--b"', '"p;"', "/*@ a=1 */",
        "/*@", "/* /* */ */", "'it''s'",
    ],
}  # fmt: skip


def _statement(rng: random.Random, dialect: Dialect) -> str:
    parts = rng.choices(_FRAGMENTS[dialect], k=rng.randint(1, 14))
    return ("SELECT " if rng.random() < 0.5 else "") + "".join(parts)


# --- the properties ---------------------------------------------------------------------------


def _markers(dialect: Dialect) -> tuple[str, ...]:
    return ("--", "/*", "*/", "#") if dialect == GOOGLESQL else ("--", "/*", "*/")


def check(sql: str, dialect: Dialect) -> bool:
    """True when the gateway accepts ``sql``, after checking it against the reference; False
    when the gateway refuses it (a SqlProblem)."""
    try:
        tokens: list[Token] = statement_tokens(sql, dialect, DECLARED)
    except SqlProblem:
        return False
    try:
        refs = reference_tokens(sql, dialect)
    except RefError as exc:
        raise AssertionError(f"accepted, but the reference refuses it ({exc}): {sql!r}") from None
    masked = _masked(sql, refs)
    for marker in _markers(dialect):
        assert marker not in masked, f"an unquoted {marker!r} outside comments: {sql!r}"
    semis = [r for r in refs if r.kind == "semi"]
    if semis:
        after = [r for r in refs if r.pos > semis[0].pos and r.kind not in ("space", "comment")]
        assert not after, f"accepted with SQL after ';' ({after[0]}): {sql!r}"
        ended = [r for r in refs if r.pos < semis[0].pos]
    else:
        ended = refs
    # The statement ends at the same ';' (statement_tokens cut it off: read the whole text)
    whole = _tokenize(sql, dialect)
    cut = next((t.pos for t in whole if t.is_punct(";")), None)
    assert cut == (semis[0].pos if semis else None), f"the statement ends elsewhere: {sql!r}"
    assert whole[: len(tokens)] == tokens and len(whole) - len(tokens) == (1 if semis else 0)
    quoted = ("string", "quoted", "param")
    got = [(t.pos, t.kind) for t in tokens if t.kind in quoted]
    want = [(r.pos, r.kind) for r in ended if r.kind in quoted]
    assert got == want, f"quoted text and parameters differ: {sql!r}\n{got}\n{want}"
    got_names = [t.text for t in tokens if t.kind == "param"]
    assert got_names == [r.name for r in ended if r.kind == "param"], sql
    return True


def _tokenize(sql: str, dialect: Dialect) -> list[Token]:
    from gateway.policy import pgsql, sqlscan

    return sqlscan._tokenize(sql) if dialect == GOOGLESQL else pgsql.tokenize(sql, DECLARED)


@pytest.mark.parametrize("dialect", [GOOGLESQL, POSTGRESQL])
def test_what_the_reader_accepts_the_reference_reads_alike(dialect: Dialect) -> None:
    rng = random.Random(f"{SEED}-{dialect}")  # noqa: S311 - deterministic on purpose
    accepted = sum(check(_statement(rng, dialect), dialect) for _ in range(CASES))
    print(f"{dialect}: {accepted} of {CASES} statements accepted and read alike (seed {SEED})")
    # Most fragments soup is refused; enough must be accepted for the test to mean something.
    assert accepted >= CASES // 10, f"only {accepted} of {CASES} accepted"


# The reference itself must tell right from wrong, or the fuzz could pass by agreeing with a
# broken reader.
@pytest.mark.parametrize(
    ("dialect", "sql", "kinds"),
    [
        (GOOGLESQL, "SELECT 'a--b' -- c\n, @p, @`q`, `x`, r'\\'', 0X1e--c\n;", None),
        (GOOGLESQL, "SELECT '''a\n'''#x", ["word", "space", "string", "comment"]),
        (POSTGRESQL, "SELECT $t$;$t$, E'\\'', 'a''b', \"x\"\"\", $1 /* /* */ */ # 1.e3;", None),
        (POSTGRESQL, "SELECT a$$b, somE'x'", ["word", "space", "word", "other", "space", "word",
                                             "string"]),
    ],
)  # fmt: skip
def test_the_reference_reads_these(dialect: Dialect, sql: str, kinds: list[str] | None) -> None:
    refs = reference_tokens(sql, dialect)
    assert "".join(r.text for r in refs) == sql
    if kinds is not None:
        assert [r.kind for r in refs] == kinds
    assert check(sql, dialect)


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (GOOGLESQL, "SELECT 'a"),
        (GOOGLESQL, "SELECT /* a"),
        (POSTGRESQL, "SELECT /* a /* b */"),
        (POSTGRESQL, "SELECT $t$ a $T$"),
        (POSTGRESQL, "SELECT E'a\\'"),
        (POSTGRESQL, "SELECT 1x"),
        (POSTGRESQL, "SELECT @p"),
    ],
)
def test_the_reference_refuses_these(dialect: Dialect, sql: str) -> None:
    with pytest.raises(RefError):
        reference_tokens(sql, dialect)


def test_a_reader_that_hid_a_comment_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties catch a reader that reads differently: with GoogleSQL's ``#`` comment
    taken for an operator (as a PostgreSQL reader would), ``SELECT 1 # @p`` yields a parameter
    the reference reads as comment text."""
    from gateway.policy import sqlscan

    lexicon = sqlscan._LEXICON
    broken = type(lexicon)(
        line_comments=("--",),
        line_end=lexicon.line_end,
        nested_comments=lexicon.nested_comments,
        readers=lexicon.readers,
    )
    monkeypatch.setattr(sqlscan, "_LEXICON", broken)
    with pytest.raises(AssertionError, match="quoted text and parameters differ"):
        check("SELECT 1 # @p", GOOGLESQL)
