"""What ``sqlscan`` assumes of Spanner's lexer, checked on the emulator (which runs ZetaSQL's
lexer, as Spanner does): a ``--`` or ``#`` comment ends at a carriage return or a line feed, and at
nothing else that Python (``str.splitlines``) or Unicode calls a line break. The policy loader
refuses all of these but LF in SQL anyway; were Spanner to read one otherwise, this test would say
so."""

from __future__ import annotations

import pytest
from spanner_stack import query_rows

from gateway.policy.sqlscan import _tokenize

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
