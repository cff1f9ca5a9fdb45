"""How many rows a read keeps (``execute._ReadRequest.limit``), on the real emulator, on the direct
path and on the client library's: ``max_rows``, and a paginated query one more, since its LIMIT
reads one row past its page. A page as large as ``max_rows`` is then neither cut nor marked
truncated, and the row past it answers ``next_cursor``."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

from gateway.app import Gateway

DATABASE = "sgreadlimit"
DDL = ["CREATE TABLE Items (Id INT64 NOT NULL) PRIMARY KEY (Id)"]
SEED = [f"INSERT INTO Items (Id) VALUES ({i})" for i in range(1, 6)]  # noqa: S608
CURSOR_KEY = base64.urlsafe_b64encode(b"L" * 32).rstrip(b"=").decode()

POLICY = """\
identities:
  reader: {database_role: limit_reader}
queries:
  paged:
    identity: reader
    sql: SELECT Id FROM Items WHERE (@after IS NULL OR Id > @after) ORDER BY Id LIMIT @n
    params:
      after: {type: INT64, from: cursor.Id}
      n: {type: INT64, from: page_size}
    pagination: {keyset: [Id], page_size: {default: 2, max: 2}}
    max_rows: 2
  unpaged:
    identity: reader
    sql: SELECT Id FROM Items ORDER BY Id
    max_rows: 2
routes:
  - {path: /paged, method: GET, query: paged, allow: [tester]}
  - {path: /unpaged, method: GET, query: unpaged, allow: [tester]}
"""


@pytest.fixture(scope="module")
async def served(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    make_database(demo_database, DATABASE, DDL, SEED)
    async with gateway_on(
        tmp_path_factory.mktemp("readlimit"),
        demo_database,
        policy_text(DATABASE, POLICY),
        issuer=idp.issuer,
        cursor_keys=CURSOR_KEY,
    ) as served:
        yield served


@pytest.fixture(scope="module")
def headers(token_for: Token) -> dict[str, str]:
    return bearer(token_for("support-console"))


@pytest.fixture(params=["direct", "library"])
def path_taken(request: pytest.FixtureRequest, served: tuple[Gateway, httpx.AsyncClient]) -> Any:
    """The read path under test; the direct reads' counters before the test."""
    executor = served[0].executor
    executor.direct_reads = request.param == "direct"
    executor._directs.clear()
    yield request.param, dict(executor.direct_counts)
    executor.direct_reads = True
    executor._directs.clear()


async def test_a_page_of_max_rows_reads_one_row_more_and_answers_a_next_cursor(
    served: tuple[Gateway, httpx.AsyncClient], headers: dict[str, str], path_taken: Any
) -> None:
    app, http = served
    way, before = path_taken
    pages: list[tuple[list[int], bool]] = []
    cursor: str | None = None
    for _ in range(4):
        query = {"cursor": cursor} if cursor else {}
        response = await http.get("/paged", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(([r["Id"] for r in body["rows"]], body["truncated"]))
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    assert pages == [([1, 2], False), ([3, 4], False), ([5], False)]
    counts = app.executor.direct_counts
    sent_direct = counts["direct"] + counts["unary"] - before["direct"] - before["unary"]
    assert sent_direct == (3 if way == "direct" else 0)


async def test_a_query_without_pages_keeps_max_rows_and_says_it_was_cut(
    served: tuple[Gateway, httpx.AsyncClient], headers: dict[str, str], path_taken: Any
) -> None:
    _, http = served
    body = (await http.get("/unpaged", headers=headers)).json()
    assert [r["Id"] for r in body["rows"]] == [1, 2]
    assert body["truncated"] is True
    assert "next_cursor" not in body
