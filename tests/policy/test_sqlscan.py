from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.sqlscan import SqlInfo, SqlProblem, scan_sql


def test_a_query_with_params_in_order_of_first_appearance() -> None:
    info = scan_sql("SELECT * FROM Orders WHERE TenantId = @tenant AND (OrderId = @id OR @tenant = 'x')")
    assert info == SqlInfo(params=("tenant", "id"), kind="query", returning=False, tables=("Orders",))


def test_param_names_keep_their_case() -> None:
    assert scan_sql("SELECT @Tenant, @tenant").params == ("Tenant", "tenant")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '@notaparam'",
        'SELECT "@notaparam"',
        "SELECT '''@notaparam\n'''",
        'SELECT """@notaparam"""',
        "SELECT r'@notaparam\\'@still'",
        "SELECT b'@notaparam', B\"@x\", rb'@y', BR'@z'",
        "SELECT 'it\\'s @notaparam'",
        "SELECT `@notaparam` FROM T",
        "SELECT 1 -- @notaparam",
        "SELECT 1 # @notaparam",
        "SELECT /* @notaparam; */ 1",
        "SELECT @@optimizer_version",
        "SELECT * FROM Orders@{FORCE_INDEX=OrdersByStatus}",
    ],
)
def test_no_params_in_strings_comments_identifiers_system_variables_or_hints(sql: str) -> None:
    assert scan_sql(sql).params == ()


def test_a_param_right_after_a_string_is_still_found() -> None:
    assert scan_sql("SELECT 'a@b'||@c, \"\"\"x\"\"\"||@d").params == ("c", "d")


def test_a_trailing_semicolon_and_comments_are_allowed() -> None:
    assert scan_sql("SELECT @a; -- done\n /* really */ # yes\n").params == ("a",)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "SELECT 1;;",
        "DELETE FROM T WHERE TRUE; DROP TABLE T",
        "SELECT 1; -- fine\nSELECT 2",
    ],
)
def test_more_than_one_statement_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="more than one statement"):
        scan_sql(sql)


def test_a_semicolon_inside_a_string_or_comment_does_not_end_the_statement() -> None:
    assert scan_sql("SELECT ';DROP TABLE T' /* ; */ -- ;\n FROM T").kind == "query"


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* x */", ";"])
def test_an_empty_statement_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="empty statement"):
        scan_sql(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE T (K INT64) PRIMARY KEY (K)",
        "ALTER TABLE T ADD COLUMN C STRING(MAX)",
        "drop table T",
        "GRANT SELECT ON TABLE T TO ROLE r",
    ],
)
def test_ddl_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match=r"DDL \(\w+\) is refused"):
        scan_sql(sql)


@pytest.mark.parametrize("sql", ["CALL cancel_query('1')", "EXPLAIN SELECT 1", "'x'", "42"])
def test_anything_else_that_is_not_a_query_or_dml_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="does not start a query or DML"):
        scan_sql(sql)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 'abc", "unterminated string literal (SQL line 1, column 8)"),
        ("SELECT\n  'abc\n'", "unterminated string literal (SQL line 2, column 3)"),
        ("SELECT '''abc''", "unterminated string literal"),
        ("SELECT r'abc\\'", "unterminated string literal"),
        ("SELECT 1 /* abc", "unterminated comment (SQL line 1, column 10)"),
        ("SELECT `abc", "unterminated quoted identifier"),
        ("SELECT @ x", "'@' must be followed by a parameter name"),
        ("SELECT @1", "'@' must be followed by a parameter name"),
        ("SELECT @@ x", "'@@' must be followed by a system variable name"),
        ("SELECT @@0x1F", "'@@' must be followed by a system variable name"),
    ],
)
def test_lexical_errors_say_what_and_where(sql: str, message: str) -> None:
    with pytest.raises(SqlProblem) as caught:
        scan_sql(sql)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "query"),
        ("select 1", "query"),
        ("WITH a AS (SELECT 1) SELECT * FROM a", "query"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "query"),
        ("@{USE_ADDITIONAL_PARALLELISM=TRUE} SELECT 1", "query"),
        ("-- leading comment\nSELECT 1", "query"),
        ("INSERT INTO T (K) VALUES (1)", "dml"),
        ("insert T (K) VALUES (1)", "dml"),
        ("INSERT OR UPDATE INTO T (K) VALUES (1)", "dml"),
        ("UPDATE T SET C = 1 WHERE TRUE", "dml"),
        ("DELETE FROM T WHERE TRUE", "dml"),
        ("DELETE T WHERE TRUE", "dml"),
        ("@{PDML_MAX_PARALLELISM=2} UPDATE T SET C = 1 WHERE TRUE", "dml"),
    ],
)
def test_kind(sql: str, kind: str) -> None:
    assert scan_sql(sql).kind == kind


@pytest.mark.parametrize(
    ("sql", "returning"),
    [
        ("INSERT INTO T (K) VALUES (1) THEN RETURN K", True),
        ("UPDATE T SET C = 1 WHERE TRUE then /* x */ return *", True),
        ("DELETE FROM T WHERE TRUE THEN RETURN WITH ACTION *", True),
        ("INSERT INTO T (K) VALUES ('THEN RETURN')", False),
        ("UPDATE T SET C = CASE WHEN C THEN 1 ELSE 2 END WHERE TRUE", False),
        ("SELECT CASE WHEN TRUE THEN 1 END", False),
    ],
)
def test_then_return(sql: str, returning: bool) -> None:
    assert scan_sql(sql).returning is returning


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT * FROM Orders o JOIN Items i ON o.Id = i.OrderId", ("Orders", "Items")),
        ("SELECT * FROM Orders, Items AS i, `Other Table`", ("Orders", "Items", "Other Table")),
        ("SELECT * FROM shop.Orders@{FORCE_INDEX=Idx}", ("shop.Orders",)),
        ("SELECT * FROM (SELECT * FROM Inner1) JOIN UNNEST(@ids) AS id ON TRUE", ("Inner1",)),
        ("WITH recent AS (SELECT * FROM Orders) SELECT * FROM recent JOIN Items ON TRUE",
         ("Orders", "Items")),
        ("SELECT EXTRACT(YEAR FROM CreatedAt) FROM Orders", ("Orders",)),
        ("SELECT * FROM Orders WHERE a IS DISTINCT FROM b", ("Orders",)),
        ("INSERT INTO Orders (a) SELECT a FROM Staging", ("Orders", "Staging")),
        ("INSERT OR IGNORE Orders (a) VALUES (1)", ("Orders",)),
        ("UPDATE Orders SET a = 1 WHERE TRUE", ("Orders",)),
        ("DELETE FROM Orders WHERE TRUE", ("Orders",)),
        ("DELETE Orders WHERE Id IN (SELECT Id FROM Old)", ("Orders", "Old")),
        ("SELECT * FROM Orders JOIN Orders ON TRUE", ("Orders",)),
        ("SELECT 'FROM Fake' FROM Real -- FROM Commented", ("Real",)),
    ],
)
def test_tables_best_effort(sql: str, tables: tuple[str, ...]) -> None:
    assert scan_sql(sql).tables == tables


# --- text inside a literal or a comment never changes the result ------------------------------

_BASES = [
    "SELECT a, {x} AS v FROM Orders WHERE id = @id",
    "INSERT INTO Orders (a, b) VALUES (@a, {x}) THEN RETURN a",
    "UPDATE Orders SET note = {x} WHERE id = @id",
    "WITH c AS (SELECT * FROM T WHERE k = @k) SELECT {x} FROM c JOIN U ON TRUE",
    "DELETE FROM Orders WHERE note = {x} AND id = @id",
]
# Control, format and line-separator characters are refused anywhere (tested below); tab and LF are not.
_REFUSED = ("Cc", "Cf", "Zl", "Zp", "Cs")
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=_REFUSED, include_characters="\t\n"),
    max_size=12,
)


@st.composite
def _literals(draw: st.DrawFn) -> str:
    body = draw(_text) + "@x;" + draw(_text)
    quote = draw(st.sampled_from(["'", '"', "'''", '"""']))
    raw = draw(st.booleans())
    prefix = draw(st.sampled_from(["", "b", "B"])) + ("r" if raw else "")
    if raw:  # a raw literal cannot escape, so leave out what would end it
        body = "".join(c for c in body if c not in "\\'\"" and (len(quote) == 3 or c != "\n"))
    else:
        body = body.replace("\\", "\\\\").replace(quote[0], "\\" + quote[0])
        if len(quote) == 1:
            body = body.replace("\n", "\\n")
    return f"{prefix}{quote}{body}{quote}"


@st.composite
def _comments(draw: st.DrawFn) -> str:
    body = draw(_text) + "@x;" + draw(_text)
    style = draw(st.sampled_from(["block", "dash", "hash"]))
    if style == "block":
        return "/*" + body.replace("*/", "* /") + "*/"
    line = body.replace("\n", " ").replace("\r", " ")
    return ("--" if style == "dash" else "#") + line + "\n"


@given(st.sampled_from(_BASES), _literals())
def test_a_string_literal_holding_a_param_and_semicolon_changes_nothing(base: str, literal: str) -> None:
    assert scan_sql(base.format(x=literal)) == scan_sql(base.format(x="''"))


@given(st.sampled_from(_BASES), _comments(), st.data())
def test_a_comment_holding_a_param_and_semicolon_changes_nothing(
    base: str, comment: str, data: st.DataObject
) -> None:
    sql = base.format(x="'v'")
    gaps = [0, *(i for i, c in enumerate(sql) if c == " "), len(sql)]
    at = data.draw(st.sampled_from(gaps))
    with_comment = sql[:at] + " " + comment + sql[at:]
    assert scan_sql(with_comment) == scan_sql(sql)


# --- line terminators and invisible characters: read as Spanner reads them --------------------


@pytest.mark.parametrize(
    ("sql", "char", "column"),
    [
        # The exploit: Spanner ends the comment at the CR, so OR TRUE would run.
        ("SELECT * FROM Orders WHERE TenantId = @tenant -- scoped\r OR TRUE", "U+000D", 56),
        ("SELECT * FROM Orders WHERE TenantId = @tenant # scoped\r OR TRUE", "U+000D", 55),
        ("SELECT 1 -- a\r\nFROM T", "U+000D", 14),
        ("SELECT 'a\rb'", "U+000D", 10),
        ("SELECT 1\x0b", "U+000B", 9),
        ("SELECT\x0c1", "U+000C", 7),
        ("SELECT 1 -- \x85 OR TRUE", "U+0085", 13),
        ("SELECT 1 -- \u2028 OR TRUE", "U+2028", 13),
        ("SELECT 1 -- \u2029 OR TRUE", "U+2029", 13),
        ("SELECT 'admin\u202e' = @x", "U+202E", 14),  # a bidi override (Trojan Source)
        ("SELECT\u200b1", "U+200B", 7),
        ("SELECT 1\x00", "U+0000", 9),
        ("SELECT 1 \x1f", "U+001F", 10),
        ("SELECT 1\n-- ok\n\x7f", "U+007F", 1),
    ],
)
def test_control_and_format_characters_are_refused_where_they_are(
    sql: str, char: str, column: int
) -> None:
    with pytest.raises(SqlProblem) as caught:
        scan_sql(sql)
    message = str(caught.value)
    assert message.startswith(f"{char} (")
    assert "is not allowed in policy SQL: the only control characters allowed are tab" in message
    line = sql.count("\n", 0, caught.value.offset) + 1
    assert message.endswith(f"(SQL line {line}, column {column})")
    assert sql[caught.value.offset or 0] == chr(int(char[2:], 16))


def test_tabs_line_feeds_and_unicode_text_are_fine() -> None:
    sql = (
        "SELECT\tname\nFROM T -- caf\u00e9 \u2014 \u00a0\n"
        "WHERE n = 'Gr\u00fc\u00dfe \U0001f600' AND id = @id"
    )
    assert scan_sql(sql).params == ("id",)


@given(st.sampled_from(_BASES), st.text(st.characters(categories=_REFUSED), min_size=1, max_size=1))
def test_a_refused_character_anywhere_is_refused(base: str, char: str) -> None:
    if char in "\t\n":
        return
    for sql in (base.format(x=f"'{char}'"), base.format(x="1 -- " + char), base + char):
        with pytest.raises(SqlProblem, match="is not allowed in policy SQL"):
            scan_sql(sql)


def test_comments_end_at_a_carriage_return_as_in_spanner() -> None:
    """Defence in depth below the character check: the tokenizer itself ends ``--`` and ``#``
    comments at CR, LF or CRLF (ZetaSQL's ``dash_comment``/``pound_comment``), and a quoted string
    or identifier that is not triple-quoted holds neither."""
    from gateway.policy.sqlscan import _tokenize

    for comment in ("-- scoped", "# scoped"):
        for end in ("\r", "\n", "\r\n"):
            tokens = _tokenize(f"WHERE TenantId = @tenant {comment}{end} OR TRUE")
            assert [t.text for t in tokens][-2:] == ["OR", "TRUE"]
    for unterminated in ("SELECT 'a\rb'", "SELECT `a\rb`"):
        with pytest.raises(SqlProblem, match="unterminated"):
            _tokenize(unterminated)
