"""Both dialects' readers through the one scanning loop (``sqltoken.scan``): where a parameter is
read and where it is text, at the edges where comments, strings, line breaks and Unicode spaces
meet; the same statement in each dialect (``{p}`` is ``@p`` in GoogleSQL, ``$1`` in PostgreSQL,
the first declared parameter ``p``), or the one text both read differently."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from gateway.policy.sqlscan import SqlProblem, scan_sql, statement_tokens
from gateway.policy.sqltoken import (
    DIALECTS,
    GOOGLESQL,
    POSTGRESQL,
    Dialect,
    Lexicon,
    Reader,
    Token,
)

GSQL, PG = GOOGLESQL, POSTGRESQL
PARAM = {GSQL: ("@p", "@q"), PG: ("$1", "$2")}


def params(sql: str, dialect: Dialect) -> tuple[str, ...]:
    """The parameters ``sql`` uses, ``{p}`` and ``{q}`` written in ``dialect``."""
    p, q = PARAM[dialect]
    return scan_sql(sql.replace("{p}", p).replace("{q}", q), dialect, ("p", "q")).params


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '--' AS a FROM t WHERE x = {p}",
        "SELECT 'a -- b' AS a, '#' AS h, '/*' AS c FROM t WHERE x = {p}",
        "SELECT '*/' AS a FROM t /* a comment */ WHERE x = {p}",
        "SELECT 1 -- /* opens nothing in a line comment\nFROM t WHERE x = {p}",
        "SELECT 1 /* -- ends nothing in a block comment */ FROM t WHERE x = {p}",
        "SELECT 1 /* ' a quote is nothing in a comment */ FROM t WHERE x = {p}",
        "SELECT 1 -- ' nor here\nFROM t WHERE x = {p}",
        "SELECT 1 /*/ {q} is still in the comment */ FROM t WHERE x = {p}",
        "SELECT 1 --\nFROM t WHERE x = {p}--",
        "SELECT 1 FROM t WHERE x = {p}/**/",
    ],
)
def test_comment_and_string_markers_inside_each_other_are_text(sql: str, dialect: Dialect) -> None:
    assert params(sql, dialect) == ("p",)


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (GSQL, 'SELECT "--", \'\'\'/*\'\'\', """#""", r\'--\', b"/*", `a--b` FROM t WHERE x = @p'),
        (GSQL, "SELECT '''a\n-- b''' FROM t WHERE x = @p"),
        (PG, "SELECT E'--', $$/*$$, $t$--$t$, \"a--b\", X'/*', N'#' FROM t WHERE x = $1"),
        (PG, "SELECT 'a\n-- b', $$\n/* $$ FROM t WHERE x = $1"),
    ],
)
def test_comment_markers_in_each_dialects_quoted_text_are_text(dialect: Dialect, sql: str) -> None:
    assert params(sql, dialect) == ("p",)


# --- block comments: PostgreSQL's nest, GoogleSQL's end at the first */ ------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 /* a /* b */ {q} */ FROM t WHERE x = {p}",
        # "/*/" opens a comment inside one in PostgreSQL (its "/*" is read first) and, in
        # GoogleSQL, ends the one open (its "*/")
        "SELECT 1 /* a /*/ b {q} */ */ FROM t WHERE x = {p}",
        "SELECT 1 /* a /* b */ c /* d */ {q} */ FROM t WHERE x = {p}",
    ],
)
def test_block_comments_nest_in_postgresql_only(sql: str) -> None:
    """PostgreSQL reads one nested comment; GoogleSQL ends the comment at the first ``*/``, reads
    ``{q}`` as SQL and then meets a ``*/`` outside any comment, which it refuses (a ``*``
    touching a comment marker): a reader that nested would have hidden ``{q}``."""
    assert params(sql, PG) == ("p",)
    with pytest.raises(SqlProblem, match=r"'\*' touches the comment marker '\*/'"):
        params(sql, GSQL)


def test_a_nested_comment_left_open_is_unterminated_in_postgresql_only() -> None:
    sql = "SELECT 1 /* a /* b */ FROM t WHERE x = {p}"
    assert params(sql, GSQL) == ("p",)
    with pytest.raises(SqlProblem, match=r"unterminated comment \(SQL line 1, column 10\)"):
        params(sql, PG)


# --- strings across line breaks -----------------------------------------------------------------


def test_googlesql_strings_on_following_lines_are_two_literals_each_with_its_own_escapes() -> None:
    """The GoogleSQL counterpart of PostgreSQL's continued-string repro (``test_pgsql``): each
    literal is read on its own, so ``\\'`` is a quote inside the second and ``@org`` is text."""
    sql = "SELECT * FROM t WHERE c = 'a'\n'\\' AND org = @org AND ' = 'x'"
    tokens = statement_tokens(sql, GSQL)
    assert [(t.kind, t.text) for t in tokens[-4:]] == [
        ("string", "'a'"),
        ("string", "'\\' AND org = @org AND '"),
        ("punct", "="),
        ("string", "'x'"),
    ]
    assert scan_sql(sql, GSQL).params == ()


def test_a_googlesql_string_that_is_not_triple_quoted_cannot_hold_a_line_feed() -> None:
    with pytest.raises(SqlProblem, match=r"unterminated string literal \(SQL line 1, column 27\)"):
        params("SELECT * FROM t WHERE c = 'a\n{p}'", GSQL)
    assert params("SELECT * FROM t WHERE c = '''a\n{q}''' AND x = {p}", GSQL) == ("p",)


def test_a_postgresql_string_holds_a_line_feed_and_what_follows_it_is_text() -> None:
    assert params("SELECT * FROM t WHERE c = 'a\n{q}' AND x = {p}", PG) == ("p",)
    assert params("SELECT * FROM t WHERE c = E'a\\'\n{q}' AND x = {p}", PG) == ("p",)


@pytest.mark.parametrize("sql", ["SELECT 'a' 'b' FROM t WHERE x = $1", "SELECT E'a' /* c */ 'b'"])
def test_a_postgresql_string_followed_by_another_on_the_same_line_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="one string continued in PostgreSQL"):
        scan_sql(sql, PG, ("p",))


# --- Unicode spaces: refused outside quoted text, text inside it --------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "sql",
    [
        "\u2003SELECT 1 FROM t WHERE x = {p}",
        "SELECT 1 FROM t WHERE x = /* c */\u2003{p}",
        "SELECT 1 FROM t WHERE x = 'v' AND y ='w'\u2003{p}",
        "SELECT 1 FROM t -- c\n\u2003WHERE x = {p}",
        "SELECT 1 FROM t WHERE x = {p} AND\u2003y = 1",
        "SELECT 1 FROM t WHERE x = ({p})\u2003",
    ],
)
def test_a_unicode_space_next_to_comments_strings_and_placeholders_is_refused(
    sql: str, dialect: Dialect
) -> None:
    with pytest.raises(SqlProblem) as caught:
        params(sql, dialect)
    assert "U+2003 (EM SPACE) is not allowed outside quoted text" in str(caught.value)
    assert caught.value.offset is not None
    p, _ = PARAM[dialect]
    assert sql.replace("{p}", p)[caught.value.offset] == "\u2003"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_unicode_space_right_after_a_placeholder_is_refused(dialect: Dialect) -> None:
    # GoogleSQL: the space, after the name; PostgreSQL: $1 followed by a character of a name
    message = r"U\+2003 \(EM SPACE\)" if dialect == GSQL else r"trailing junk after parameter \$1"
    with pytest.raises(SqlProblem, match=message):
        params("SELECT 1 FROM t WHERE x = {p}\u2003", dialect)


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (GSQL, "SELECT 'a\u2003b', \"\u2003\", '''\u2003\n''', r'\u2003', `x\u2003y` FROM t "
               "/* \u2003 */ WHERE x = @p -- \u2003\n"),
        (PG, "SELECT $$\u2003$$, E'\u2003', \"x\u2003y\" FROM t /* \u2003 /* \u3000 */ */ "
             "WHERE x = $1 -- \u2003\n"),
    ],
)  # fmt: skip
def test_a_unicode_space_in_quoted_text_and_comments_is_text(dialect: Dialect, sql: str) -> None:
    assert params(sql, dialect) == ("p",)


# --- what each dialect reads differently through the same loop ---------------------------------


def test_a_non_ascii_letter_starts_a_name_in_postgresql_only() -> None:
    def read(dialect: Dialect) -> list[tuple[str, str]]:
        return [(t.kind, t.text) for t in statement_tokens("SELECT Éa FROM t", dialect)]

    assert read(PG) == [("word", "select"), ("word", "Éa"), ("word", "from"), ("word", "t")]
    assert read(GSQL) == [
        ("word", "SELECT"), ("punct", "É"), ("word", "a"), ("word", "FROM"), ("word", "t"),
    ]  # fmt: skip


def test_hash_starts_a_comment_in_googlesql_only() -> None:
    sql = "SELECT 1 # {q}\nFROM t WHERE x = {p}"
    assert params(sql, GSQL) == ("p",)
    assert params(sql, PG) == ("q", "p")


def _reader(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    return Token("punct", sql[i], i), i + 1  # pragma: no cover - never called


@pytest.mark.parametrize("char", ["-", "/", "#", "7", ".", " ", "\n", "\u2003", "é", "ab"])
def test_no_reader_may_take_a_character_the_loop_reads_itself(char: str) -> None:
    """The loop asks a dialect's readers before it looks for comments and numbers: a reader of
    ``-``, ``/`` or ``#`` would hide a comment from the gateway, so a Lexicon refuses it."""
    with pytest.raises(ValueError, match="cannot have a reader"):
        Lexicon(
            line_comments=("--", "#"),
            line_end=re.compile(r"\n"),
            nested_comments=False,
            readers={char: _reader},
        )


def test_hash_may_have_a_reader_where_it_starts_no_comment() -> None:
    lexicon = Lexicon(
        line_comments=("--",), line_end=re.compile(r"\n"), nested_comments=True,
        readers={"#": _reader},
    )  # fmt: skip
    assert "#" in lexicon.readers


# --- numbers: an exponent's sign, hex numbers (found by review: a comment hidden in a number) ---


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 FROM t WHERE 0X1e = 0X1e--{p} = x\n",  # an uppercase hex number ends at e
        "SELECT 1.E--{p}\n, 2 AS y FROM t",  # 1. then the alias E, then a comment
        "SELECT 1.e--{p}\n, 2 AS y FROM t",
        "SELECT 0XABCDE--{p}\n AS y FROM t",
        "SELECT 0x1e--{p}\n AS y FROM t",
    ],
)
def test_a_comment_right_after_a_number_is_a_comment(sql: str) -> None:
    """Spanner reads ``0X1e`` whole and ``1.e`` as ``1.`` and an alias: the ``--`` after them
    starts a comment, so a parameter in it is not used (taking ``-`` as an exponent's sign
    would have read the comment as SQL)."""
    assert params(sql, GSQL) == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_exponents_with_signs_are_still_numbers(dialect: Dialect) -> None:
    sql = "SELECT 1e-5, 1.5E+10, .5e-3, 2E5, 1.e-3, 1., 00012 FROM t WHERE x = {p}"
    p, _ = PARAM[dialect]
    numbers = [
        t.text for t in statement_tokens(sql.replace("{p}", p), dialect) if t.kind == "number"
    ]
    assert numbers == ["1e-5", "1.5E+10", ".5e-3", "2E5", "1.e-3", "1.", "00012"]
    assert params(sql, dialect) == ("p",)


def test_googlesql_reads_hexadecimal_numbers() -> None:
    sql = "SELECT 0x1e, 0X1E, 0x1F FROM t WHERE x = @p"
    numbers = [t.text for t in statement_tokens(sql, GSQL) if t.kind == "number"]
    assert numbers == ["0x1e", "0X1E", "0x1F"]
    assert params(sql, GSQL) == ("p",)


@pytest.mark.parametrize(
    ("number", "junk"),
    [
        ("1x", "1x"),
        ("1e", "1e"),
        ("1E", "1E"),
        ("1e-", "1e-"),
        ("1e+x", "1e+"),  # as Spanner: the exponent lacks its digits
        ("1e--", "1e-"),  # not 1e then a comment: Spanner refuses "1e-"
        ("1.e", "1.e"),
        ("1.5e", "1.5e"),
        ("1e5x", "1e5x"),
        ("1.2x", "1.2x"),
        ("0x1F", "0x1F"),
        ("0X1e--", "0X1e"),
        ("1_000", "1_000"),
        (".5_0", ".5_0"),
        ("1é", "1é"),
    ],
)
def test_a_postgresql_number_followed_by_a_name_character_is_trailing_junk(
    number: str, junk: str
) -> None:
    """Spanner's PostgreSQL dialect refuses each of these ("trailing junk after numeric literal",
    measured on the emulator); GoogleSQL reads its own way (``0x1F`` is a number there)."""
    sql = "SELECT " + number + "\n FROM t WHERE x = $1"  # noqa: S608
    with pytest.raises(SqlProblem) as caught:
        scan_sql(sql, PG, ("p",))
    assert str(caught.value).startswith(f"trailing junk after numeric literal {junk!r}: ")
    assert caught.value.offset == len("SELECT ")


@pytest.mark.parametrize(
    ("sql", "numbers"),
    [
        ("SELECT 1 AS x, 2+3, 4*5, 6-7, 8/9, 10)", ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]),
        ("SELECT 1..2", ["1", ".2"]),  # 1 then .. (Spanner: a syntax error at "..")
        ("SELECT 1.2.3", ["1.2", ".3"]),  # (Spanner: a syntax error at ".3")
        ("SELECT 1$1", ["1"]),  # 1 then the placeholder $1 (Spanner: a syntax error)
        ("SELECT 1--c\n", ["1"]),
        ("SELECT 1/*c*/", ["1"]),
        ("SELECT 1e5/*c*/", ["1e5"]),
    ],
)
def test_postgresql_numbers_end_where_spanner_ends_them(sql: str, numbers: list[str]) -> None:
    assert [t.text for t in statement_tokens(sql, PG, ("p",)) if t.kind == "number"] == numbers


# --- PostgreSQL statement hints: Spanner reads inside /*@ ... */ (found by review) -------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a FROM t /*@ force_index=_base_table -- */ WHERE x = $1\n*/ WHERE y = $2",
        "SELECT a FROM t /*@ force_index='i' */ WHERE x = $1",
        "/*@ use_additional_parallelism=true /* */ SELECT a FROM t WHERE x = $1",
        "SELECT a FROM t /*@ x=$1 */ WHERE y = $2",
        "SELECT a FROM t /*@ force_index=i WHERE x = $1",
    ],
)
def test_a_postgresql_hint_holding_more_than_name_value_pairs_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="hint"):
        scan_sql(sql, PG, ("p", "q"))


def test_a_postgresql_hint_of_name_value_pairs_is_read_and_uses_no_parameter() -> None:
    sql = "SELECT a FROM t /*@ force_index=_base_table, use_additional_parallelism=true */ WHERE x = $1"
    assert scan_sql(sql, PG, ("p",)).params == ("p",)
    assert "force_index" not in [t.text for t in statement_tokens(sql, PG)]


def test_a_hint_inside_a_postgresql_comment_is_a_nested_comment() -> None:
    sql = "SELECT a FROM t /* note /*@ x -- */ y */ WHERE x = $1"
    assert params(sql.replace("$1", "{p}"), PG) == ("p",)


def test_in_googlesql_a_block_comment_opening_with_at_is_a_comment() -> None:
    assert params("SELECT a FROM t /*@ x -- */ WHERE x = {p}", GSQL) == ("p",)


def test_a_postgresql_line_comment_ends_at_a_carriage_return_too() -> None:
    from gateway.policy.pgsql import tokenize

    texts = [t.text for t in tokenize("SELECT a -- note\rFROM t", ())]
    assert [t.lower() for t in texts[-2:]] == ["from", "t"]


# --- a comment marker in or next to a token whose text is not quoted: refused -------------------


@pytest.mark.parametrize(
    ("sql", "token", "marker", "where"),
    [
        # Spanner reads these as parameters named a--b, a#b (measured on the emulator); the
        # gateway refuses them: a parameter's name is no quoted text
        ("SELECT 1 FROM t WHERE x = @`a--b`", "@`a--b`", "--", "holds"),
        ("SELECT 1 FROM t WHERE x = @`a#b`", "@`a#b`", "#", "holds"),
        ("SELECT 1 FROM t WHERE x = @`a/*b`", "@`a/*b`", "/*", "holds"),
        ("SELECT 1 FROM t WHERE x = @`a*/b`", "@`a*/b`", "*/", "holds"),
        ("SELECT 2*/*c*/3 FROM t", "*", "*/", "touches"),  # * then a comment, or */ then *?
        ("SELECT 2 /* c */*3 FROM t", "*", "/*", "touches"),
        ("SELECT 1 FROM t WHERE x = @p */", "*", "*/", "touches"),  # a comment's end, unopened
    ],
)
def test_a_googlesql_token_holding_or_touching_a_comment_marker_is_refused(
    sql: str, token: str, marker: str, where: str
) -> None:
    with pytest.raises(SqlProblem) as caught:
        scan_sql(sql, GSQL, ("p",))
    message = str(caught.value)
    assert message.startswith(f"{token!r} {where} the comment marker {marker!r}: ")
    assert "(--, /*, */, #)" in message
    assert sql[caught.value.offset or 0 :].startswith(marker)


@pytest.mark.parametrize(
    ("sql", "marker"),
    [
        ("SELECT 2*/*c*/3 FROM t WHERE x = $1", "*/"),
        ("SELECT 2 /* c */*3 FROM t WHERE x = $1", "/*"),
        ("SELECT 1 FROM t WHERE x = $1 */", "*/"),
        ("SELECT 1 /* a /* b */ */ */ FROM t WHERE x = $1", "*/"),  # one */ too many
    ],
)
def test_a_postgresql_token_touching_a_comment_marker_is_refused(sql: str, marker: str) -> None:
    with pytest.raises(SqlProblem, match=re.escape(f"'*' touches the comment marker {marker!r}")):
        scan_sql(sql, PG, ("p",))


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        (GSQL, "SELECT `a--b`, `c#d`, `e/*f*/` FROM t WHERE x = @p"),
        (GSQL, "SELECT 2 * /* c */ 3, 4 / 5, 6 - 7, 8 -9 FROM t WHERE x = @p--\n"),
        (GSQL, "SELECT COUNT(*)/2, t.* FROM t WHERE x = @p/*c*/"),
        (PG, 'SELECT "a--b", "e/*f*/", 1 # 2, $$*/$$ FROM t WHERE x = $1/*c*/'),
        (PG, "SELECT 2 * /* c */ 3, 4 / 5, 6 - 7, 8 -9 FROM t WHERE x = $1--\n"),
    ],
)
def test_comment_markers_in_quoted_text_or_apart_from_tokens_are_fine(
    dialect: Dialect, sql: str
) -> None:
    assert scan_sql(sql, dialect, ("p",)).params == ("p",)


def test_pound_is_no_comment_marker_in_postgresql() -> None:
    """``#`` is an operator there: ``1#2`` is three tokens (``#`` a punct) and not refused."""
    tokens = statement_tokens("SELECT 1#2 FROM t WHERE x = $1", PG, ("p",))
    assert [t.text for t in tokens[1:4]] == ["1", "#", "2"]


def _swallow(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    """A reader that takes everything up to the next space into one operator, comment markers
    included: what a reader that read a token differently from Spanner could do."""
    end = sql.find(" ", i)
    end = len(sql) if end < 0 else end
    return Token("punct", sql[i:end], i), end


def _quote_swallow(sql: str, i: int, params: Sequence[str]) -> tuple[Token, int]:
    token, end = _swallow(sql, i, params)
    return Token("string", token.text, i), end


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("1 !--x 2", "'!--x' holds the comment marker '--'"),
        ("1 !/*x 2", "'!/*x' holds the comment marker '/*'"),
        ("1 !x*/ 2", "'!x*/' holds the comment marker '*/'"),
        ("1 !x#y 2", "'!x#y' holds the comment marker '#'"),
        ("1 !x* 2", None),
    ],
)
def test_the_loop_refuses_a_comment_marker_a_reader_swallowed(sql: str, message: str | None) -> None:
    """Whatever a dialect's reader returns, the loop checks the text it consumed: a marker in a
    token that is not QUOTED_TEXT is refused (a reader returning quoted text may hold one)."""
    from gateway.policy.sqltoken import QUOTED_TEXT, scan

    assert QUOTED_TEXT == {"string", "quoted"}

    def lexicon(reader: Reader) -> Lexicon:
        return Lexicon(
            line_comments=("--", "#"), line_end=re.compile(r"\n"), nested_comments=False,
            readers={"!": reader},
        )  # fmt: skip

    if message is None:
        assert [t.text for t in scan(sql, lexicon(_swallow))] == ["1", "!x*", "2"]
    else:
        with pytest.raises(SqlProblem, match=re.escape(message)):
            scan(sql, lexicon(_swallow))
    assert [t.kind for t in scan(sql, lexicon(_quote_swallow))] == ["number", "string", "number"]
