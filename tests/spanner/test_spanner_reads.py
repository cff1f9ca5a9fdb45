"""Reads on the real emulator: max_rows truncation, staleness, timeouts (504), priority."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

DATABASE = "sgreads"
DDL = ["CREATE TABLE Items (Id INT64 NOT NULL, Name STRING(64)) PRIMARY KEY (Id)"]
SEED = [f"INSERT INTO Items (Id, Name) VALUES ({i}, 'item {i}')" for i in range(1, 6)]  # noqa: S608
SLOW = (
    "SELECT COUNT(*) AS n FROM UNNEST(GENERATE_ARRAY(1, 1000)) a, UNNEST(GENERATE_ARRAY(1, 1000)) b"
)

POLICY = f"""\
identities:
  reader: {{database_role: reads_reader}}
  writer: {{database_role: reads_writer}}
queries:
  two:
    identity: reader
    sql: SELECT Id, Name FROM Items ORDER BY Id
    max_rows: 2
  four:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id <= 5 ORDER BY Id
    max_rows: 4
  five:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id <= 5 ORDER BY Id
    max_rows: 5
  strong:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id = @id
    params: {{id: {{type: INT64}}}}
  exact:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id = @id
    params: {{id: {{type: INT64}}}}
    staleness: {{exact: 1500ms}}
  bounded:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id = @id
    params: {{id: {{type: INT64}}}}
    staleness: 10s
  slow:
    identity: reader
    sql: {SLOW}
    timeout: 50ms
  low:
    identity: reader
    sql: SELECT COUNT(*) AS n FROM Items
    priority: low
  add:
    identity: writer
    sql: INSERT INTO Items (Id, Name) VALUES (@id, 'new')
    params: {{id: {{type: INT64}}}}
routes:
  - {{path: /two, method: GET, query: two, allow: [tester]}}
  - {{path: /four, method: GET, query: four, allow: [tester]}}
  - {{path: /five, method: GET, query: five, allow: [tester]}}
  - {{path: "/strong/{{id}}", method: GET, query: strong, allow: [tester]}}
  - {{path: "/exact/{{id}}", method: GET, query: exact, allow: [tester]}}
  - {{path: "/bounded/{{id}}", method: GET, query: bounded, allow: [tester]}}
  - {{path: /slow, method: GET, query: slow, allow: [tester]}}
  - {{path: /low, method: GET, query: low, allow: [tester]}}
  - {{path: /items, method: POST, query: add, allow: [tester]}}
"""  # noqa: S608


@pytest.fixture(scope="module")
async def http(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    make_database(demo_database, DATABASE, DDL, SEED)
    async with gateway_on(
        tmp_path_factory.mktemp("reads"),
        demo_database,
        policy_text(DATABASE, POLICY),
        issuer=idp.issuer,
    ) as (_, client):
        yield client


@pytest.fixture(scope="module")
def headers(token_for: Token) -> dict[str, str]:
    return bearer(token_for("support-console"))


@pytest.mark.parametrize(
    ("path", "ids", "truncated"),
    [("/two", [1, 2], True), ("/four", [1, 2, 3, 4], True), ("/five", [1, 2, 3, 4, 5], False)],
)
async def test_max_rows_truncates_and_says_so(
    http: httpx.AsyncClient, headers: dict[str, str], path: str, ids: list[int], truncated: bool
) -> None:
    response = await http.get(path, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["Id"] for r in body["rows"]] == ids
    assert body["row_count"] == len(ids) and body["truncated"] is truncated


async def test_exact_staleness_reads_the_past_and_strong_reads_the_present(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    new_id = 1000 + time.time_ns() % 10**6
    added = await http.post("/items", json={"id": new_id}, headers=headers)
    assert added.status_code == 200, added.text
    strong = (await http.get(f"/strong/{new_id}", headers=headers)).json()
    assert strong["rows"] == [{"Id": new_id}]
    stale = await http.get(f"/exact/{new_id}", headers=headers)
    assert stale.status_code == 200, stale.text
    assert stale.json()["rows"] == []  # as of 1.5 s ago the row did not exist
    await asyncio.sleep(1.6)
    later = (await http.get(f"/exact/{new_id}", headers=headers)).json()
    assert later["rows"] == [{"Id": new_id}]  # now it did
    bounded = await http.get("/bounded/1", headers=headers)
    assert bounded.status_code == 200 and bounded.json()["rows"] == [{"Id": 1}]


async def test_a_statement_past_its_timeout_is_504_and_the_next_call_is_fine(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    started = time.perf_counter()
    response = await http.get("/slow", headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "timeout"
    assert elapsed < 0.5  # cut at its 50 ms deadline, not after the ~0.7 s the query takes
    after = await http.get("/two", headers=headers)
    assert after.status_code == 200, after.text


async def test_a_low_priority_query_runs(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await http.get("/low", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["rows"][0]["n"] >= 5
