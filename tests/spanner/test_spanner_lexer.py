"""What ``sqlscan`` assumes of Spanner's lexer, checked on the emulator (which runs ZetaSQL's
lexer, as Spanner does): a ``--`` or ``#`` comment ends at a carriage return, not only at a line
feed. The policy loader refuses CR in SQL for that reason; were Spanner to read it otherwise, this
test would say so."""

from __future__ import annotations

import pytest
from spanner_stack import query_rows


@pytest.mark.parametrize("comment", ["--", "#"])
@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_a_line_comment_ends_at_cr_lf_and_crlf(demo_database: str, comment: str, end: str) -> None:
    # 1 + 1 when the comment ends at ``end``; 1 when it runs to the end of the statement.
    assert query_rows(demo_database, "shop", f"SELECT 1 {comment} c{end} + 1") == [[2]]


def test_the_exploit_reads_every_tenant(demo_database: str) -> None:
    """The statement the scanner once let through: Spanner runs its ``OR TRUE``."""
    sql = "SELECT DISTINCT TenantId FROM Orders WHERE TenantId = 't1' -- scoped\r OR TRUE"
    tenants = {row[0] for row in query_rows(demo_database, "shop", sql + " ORDER BY 1")}
    assert tenants >= {"t1", "t2"}
