"""What ``sqlscan`` assumes of Spanner's lexer, checked on the emulator (which runs ZetaSQL's
lexer, as Spanner does): a ``--`` or ``#`` comment ends at a carriage return or a line feed, and at
nothing else that Python (``str.splitlines``) or Unicode calls a line break. The policy loader
refuses all of these but LF in SQL anyway; were Spanner to read one otherwise, this test would say
so. And what the PostgreSQL reader assumes of Spanner's numbers, and the comment markers the
gateway refuses next to a token though Spanner reads them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.api_core import exceptions as gexc
from spanner_stack import make_database, query_rows

from gateway.policy.sqlscan import SqlProblem, _tokenize, statement_tokens
from gateway.policy.sqltoken import Dialect

# Every line boundary of str.splitlines, and CRLF.
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("comment", ["--", "#"])
def test_the_tokenizer_ends_a_comment_where_spanner_does(demo_database: str, comment: str) -> None:
    for end in BREAKS:
        sql = f"SELECT 1 {comment} c{end} + 1"
        # 1 + 1 when the comment ends at ``end``; 1 when it runs to the end of the statement.
        [[spanner]] = query_rows(demo_database, "shop", sql)
        ours = [t.text for t in _tokenize(sql)] == ["SELECT", "1", "+", "1"]
        assert (spanner == 2) == ours, (repr(end), spanner)
        assert (spanner == 2) == (end in ("\n", "\r", "\r\n")), repr(end)


def test_the_exploit_reads_every_tenant(demo_database: str) -> None:
    """The statement the scanner once let through: Spanner runs its ``OR TRUE``."""
    sql = "SELECT DISTINCT TenantId FROM Orders WHERE TenantId = 't1' -- scoped\r OR TRUE"
    tenants = {row[0] for row in query_rows(demo_database, "shop", sql + " ORDER BY 1")}
    assert tenants >= {"t1", "t2"}


PG_DB = "lexerpg"


@pytest.fixture(scope="module")
def pg_database(demo_database: str) -> str:
    make_database(demo_database, PG_DB, [], dialect="postgresql")
    return PG_DB


@pytest.mark.parametrize("number", ["1x", "1e", "1E", "1e-", "1e+x", "1.e", "1.5e", "1e5x", "0x1F", "1_000"])
def test_spanner_and_the_gateway_refuse_a_postgresql_number_with_trailing_junk(
    demo_database: str, pg_database: str, number: str
) -> None:
    sql = "SELECT " + number
    with pytest.raises(gexc.InvalidArgument, match="trailing junk after numeric literal"):
        query_rows(demo_database, pg_database, sql)
    with pytest.raises(SqlProblem, match="trailing junk after numeric literal"):
        statement_tokens(sql, "postgresql")


@pytest.mark.parametrize(
    ("number", "value"),
    [("1e+5", 100000), ("1.e-3", Decimal("0.001")), (".5", Decimal("0.5")), ("1.", 1), ("00012", 12)],
)
def test_spanner_and_the_gateway_read_these_postgresql_numbers(
    demo_database: str, pg_database: str, number: str, value: object
) -> None:
    sql = "SELECT " + number
    assert query_rows(demo_database, pg_database, sql) == [[value]]
    assert [t.text for t in statement_tokens(sql, "postgresql")] == ["select", number]


def test_googlesql_reads_hexadecimal_numbers_as_the_gateway_does(demo_database: str) -> None:
    assert query_rows(demo_database, "shop", "SELECT 0x1F, 0X1e--c\n") == [[31, 30]]
    assert [t.text for t in statement_tokens("SELECT 0x1F, 0X1e--c\n")] == ["SELECT", "0x1F", ",", "0X1e"]


@pytest.mark.parametrize("dialect", ["googlesql", "postgresql"])
def test_an_operator_glued_to_a_comment_runs_in_spanner_but_the_gateway_refuses_it(
    demo_database: str, pg_database: str, dialect: Dialect
) -> None:
    """Spanner reads ``2*/*c*/3`` as 2 * 3 in both dialects; the gateway refuses a ``*`` touching
    a comment marker anyway (defence in depth: ``*/*`` reads as a comment's end to some readers)."""
    sql = "SELECT 2*/*c*/3"
    database = "shop" if dialect == "googlesql" else pg_database
    assert query_rows(demo_database, database, sql) == [[6]]
    with pytest.raises(SqlProblem, match=r"'\*' touches the comment marker '\*/'"):
        statement_tokens(sql, dialect)
