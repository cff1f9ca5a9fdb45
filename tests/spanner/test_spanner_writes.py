"""Writes on the real emulator: THEN RETURN, commit timestamps, Idempotency-Key, the in-transaction
hook, Spanner's limits and the 409s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text, query_rows

from gateway.app import Gateway
from gateway.errors import SpannerError
from gateway.spanner.execute import Result, tags_for
from gateway.spanner.idempotency import DDL as IDEMPOTENCY_DDL
from gateway.spanner.idempotency import key_for

DATABASE = "sgwrites"
DDL = [
    "CREATE TABLE Kinds (Kind STRING(16) NOT NULL) PRIMARY KEY (Kind)",
    "CREATE TABLE Items (Id INT64 NOT NULL, Name STRING(16), Qty INT64, Kind STRING(16),"
    " CONSTRAINT FK_Kind FOREIGN KEY (Kind) REFERENCES Kinds (Kind)) PRIMARY KEY (Id)",
    "CREATE TABLE HookLog (Id INT64 NOT NULL, Note STRING(MAX)) PRIMARY KEY (Id)",
    "CREATE TABLE Tenants (TenantId STRING(36) NOT NULL) PRIMARY KEY (TenantId)",
    "CREATE TABLE Notes (TenantId STRING(36) NOT NULL, NoteId INT64 NOT NULL)"
    " PRIMARY KEY (TenantId, NoteId), INTERLEAVE IN PARENT Tenants ON DELETE CASCADE",
    *IDEMPOTENCY_DDL,
]
SEED = ["INSERT INTO Kinds (Kind) VALUES ('tool')", "INSERT INTO Tenants (TenantId) VALUES ('t2')"]

POLICY = """\
identities:
  reader: {database_role: writes_reader}
  writer: {database_role: writes_writer}
queries:
  add:
    identity: writer
    sql: INSERT INTO Items (Id, Name, Qty) VALUES (@id, @name, @qty)
    params:
      id: {type: INT64}
      name: {type: STRING, max_length: 16}
      qty: {type: INT64, default: 1}
  add_kind:
    identity: writer
    sql: INSERT INTO Items (Id, Name, Kind) VALUES (@id, 'x', @kind) THEN RETURN Id, Kind
    params:
      id: {type: INT64}
      kind: {type: STRING}
  add_returning:
    identity: writer
    sql: INSERT INTO Items (Id, Name, Qty) VALUES (@id, @name, 7) THEN RETURN Id, Name, Qty
    params:
      id: {type: INT64}
      name: {type: STRING}
  bump:
    identity: writer
    sql: UPDATE Items SET Qty = Qty + 1 WHERE Id BETWEEN @lo AND @hi THEN RETURN Id, Qty
    params:
      lo: {type: INT64}
      hi: {type: INT64}
    max_rows: 2
  bulk:
    identity: writer
    sql: INSERT INTO Items (Id, Name) SELECT id, 'bulk' FROM UNNEST(@ids) AS id
    params:
      ids: {type: "ARRAY<INT64>"}
  add_note:
    identity: writer
    sql: INSERT INTO Notes (TenantId, NoteId) VALUES (@tenant, @id)
    params:
      tenant: {type: STRING, from: claim.tenant}
      id: {type: INT64}
  add_note_for:
    identity: writer
    sql: INSERT INTO Notes (TenantId, NoteId) VALUES (@tenant, @id)
    params:
      tenant: {type: STRING}
      id: {type: INT64}
  get:
    identity: reader
    sql: SELECT Id, Name, Qty FROM Items WHERE Id = @id
    params:
      id: {type: INT64}
  divide:
    identity: reader
    sql: SELECT 10 / @d AS q
    params:
      d: {type: INT64}
routes:
  - {path: /divide, method: GET, query: divide, allow: [tester]}
  - {path: /items, method: POST, query: add, allow: [tester, writer]}
  - {path: /kinds, method: POST, query: add_kind, allow: [tester]}
  - {path: /returning, method: POST, query: add_returning, allow: [tester]}
  - {path: /bump, method: POST, query: bump, allow: [tester]}
  - {path: /bulk, method: POST, query: bulk, allow: [tester]}
  - {path: "/items/{id}", method: GET, query: get, allow: [tester]}
  - {path: /notes, method: POST, query: add_note, allow: [tester]}
  - {path: /notes-for, method: POST, query: add_note_for, allow: [tester]}
audit:
  sinks:
    - {type: file, path: audit.jsonl}
"""


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("writes-audit") / "audit.jsonl"


@pytest.fixture(scope="module")
async def stack(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory, audit_file: Path
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    make_database(demo_database, DATABASE, DDL, SEED)
    async with gateway_on(
        tmp_path_factory.mktemp("writes"),
        demo_database,
        policy_text(DATABASE, POLICY),
        issuer=idp.issuer,
        audit_path=audit_file,
    ) as pair:
        yield pair


@pytest.fixture(scope="module")
def http(stack: tuple[Gateway, httpx.AsyncClient]) -> httpx.AsyncClient:
    return stack[1]


@pytest.fixture(scope="module")
def headers(token_for: Token) -> dict[str, str]:
    return bearer(token_for("support-console"))


def new_id() -> int:
    return time.time_ns() % 10**15


def count(host: str, where: str) -> int:
    sql = f"SELECT COUNT(*) FROM Items WHERE {where}"  # noqa: S608
    return int(query_rows(host, DATABASE, sql)[0][0])


async def test_dml_answers_row_count_and_commit_timestamp(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    item = new_id()
    response = await http.post("/items", json={"id": item, "name": "a"}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"row_count", "commit_timestamp"} and body["row_count"] == 1
    assert body["commit_timestamp"].endswith("Z")
    read = await http.get(f"/items/{item}", headers=headers)
    assert read.json()["rows"] == [{"Id": item, "Name": "a", "Qty": 1}]


async def test_then_return_rows_come_back(
    http: httpx.AsyncClient, headers: dict[str, str], demo_database: str
) -> None:
    item = new_id()
    response = await http.post("/returning", json={"id": item, "name": "r"}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == [{"Id": item, "Name": "r", "Qty": 7}]
    assert body["row_count"] == 1 and body["truncated"] is False and body["commit_timestamp"]
    # An UPDATE of three rows with max_rows 2: all three change, two come back, truncated.
    for k in (1, 2):
        await http.post("/returning", json={"id": item + k, "name": "r"}, headers=headers)
    bumped = await http.post("/bump", json={"lo": item, "hi": item + 2}, headers=headers)
    assert bumped.status_code == 200, bumped.text
    result = bumped.json()
    assert result["row_count"] == 3 and result["truncated"] is True and len(result["rows"]) == 2
    assert all(r["Qty"] == 8 for r in result["rows"])
    assert count(demo_database, f"Id BETWEEN {item} AND {item + 2} AND Qty = 8") == 3


async def test_conflicts_are_409(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    item = new_id()
    first = await http.post("/items", json={"id": item, "name": "a"}, headers=headers)
    assert first.status_code == 200, first.text
    again = await http.post("/items", json={"id": item, "name": "a"}, headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "conflict", again.text
    assert "Items" not in again.json()["detail"]  # Spanner's words stay in the log
    orphan = await http.post("/kinds", json={"id": new_id(), "kind": "nope"}, headers=headers)
    assert orphan.status_code == 409, orphan.text  # a foreign key: FAILED_PRECONDITION
    assert orphan.json()["code"] == "precondition-failed"
    fine = await http.post("/kinds", json={"id": new_id(), "kind": "tool"}, headers=headers)
    assert fine.status_code == 200 and fine.json()["rows"][0]["Kind"] == "tool"


def audit_events(path: Path, request_id: str) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        e
        for e in map(json.loads, lines)
        if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] == request_id
    ]


async def test_a_write_under_a_parent_row_that_does_not_exist_is_409(
    http: httpx.AsyncClient, headers: dict[str, str], audit_file: Path, demo_database: str
) -> None:
    """Spanner answers NOT_FOUND for an interleaved row whose parent key names no row (here the
    token's tenant, t1, has no Tenants row): the caller's conflict with the database's state,
    not a statement defect (500 statement-invalid), and Spanner's words stay out of the answer."""
    orphan = await http.post("/notes", json={"id": new_id()}, headers=headers)
    assert orphan.status_code == 409, orphan.text
    problem = orphan.json()
    assert problem["code"] == "parent-row-missing"
    assert problem["outcome"] == "not-committed"
    assert "parent row does not exist" in problem["detail"]
    assert "Tenants" not in problem["detail"] and "Notes" not in problem["detail"]
    rid = orphan.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not (found := audit_events(audit_file, rid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    [event] = found
    assert event["httpRequest"]["status"] == 409
    assert event["protoPayload"]["status"] == {"code": 9, "message": "parent-row-missing"}
    for tenant in ["", "t3"]:  # any parent key without a row, whoever chose it
        other = await http.post("/notes-for", json={"tenant": tenant, "id": 1}, headers=headers)
        assert (other.status_code, other.json()["code"]) == (409, "parent-row-missing"), other.text
    too_long = await http.post("/notes-for", json={"tenant": "t" * 100, "id": 1}, headers=headers)
    assert too_long.status_code == 409, too_long.text  # longer than the column: FAILED_PRECONDITION
    assert too_long.json()["code"] == "precondition-failed"
    fine = await http.post("/notes-for", json={"tenant": "t2", "id": new_id()}, headers=headers)
    assert fine.status_code == 200, fine.text  # the parent exists: written
    assert query_rows(
        demo_database, DATABASE, "SELECT COUNT(*) FROM Notes WHERE TenantId != 't2'"
    ) == [[0]]


async def test_spanner_refusing_the_values_is_400_and_a_too_long_value_409(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    divided = await http.get("/divide", params={"d": "0"}, headers=headers)
    assert divided.status_code == 400, divided.text  # OUT_OF_RANGE: division by zero
    assert divided.json()["code"] == "statement-rejected"
    assert (await http.get("/divide", params={"d": "5"}, headers=headers)).json()["rows"] == [
        {"q": 2.0}
    ]
    long = await http.post("/returning", json={"id": new_id(), "name": "x" * 40}, headers=headers)
    assert long.status_code == 409, long.text  # Spanner: FAILED_PRECONDITION (declare max_length)
    assert long.json()["code"] == "precondition-failed"


# -- Idempotency-Key ---------------------------------------------------------------------------


async def test_a_retried_write_returns_the_first_response_and_applies_once(
    http: httpx.AsyncClient, headers: dict[str, str], demo_database: str
) -> None:
    item = new_id()
    keyed = {**headers, "Idempotency-Key": f"key-{item}"}
    first = await http.post("/returning", json={"id": item, "name": "once"}, headers=keyed)
    assert first.status_code == 200, first.text
    for _ in range(3):
        again = await http.post("/returning", json={"id": item, "name": "once"}, headers=keyed)
        assert again.status_code == 200, again.text  # not a 409: nothing ran again
        assert again.content == first.content  # the first response, commit timestamp included
    assert count(demo_database, f"Id = {item}") == 1


async def test_the_same_key_for_another_request_is_422(
    http: httpx.AsyncClient, headers: dict[str, str], demo_database: str
) -> None:
    item = new_id()
    keyed = {**headers, "Idempotency-Key": f"key-{item}"}
    first = await http.post("/items", json={"id": item, "name": "a"}, headers=keyed)
    assert first.status_code == 200, first.text
    other = await http.post("/items", json={"id": item + 1, "name": "a"}, headers=keyed)
    assert other.status_code == 422, other.text
    assert other.json()["code"] == "idempotency-key-reused"
    elsewhere = await http.post("/returning", json={"id": item, "name": "a"}, headers=keyed)
    assert elsewhere.status_code == 422  # another route with the same key: another request
    assert count(demo_database, f"Id IN ({item}, {item + 1})") == 1


async def test_keys_belong_to_their_caller(
    http: httpx.AsyncClient, headers: dict[str, str], token_for: Token, demo_database: str
) -> None:
    item = new_id()
    key = {"Idempotency-Key": f"shared-{item}"}
    mine = await http.post("/items", json={"id": item, "name": "a"}, headers={**headers, **key})
    assert mine.status_code == 200, mine.text
    theirs = await http.post(
        "/items",
        json={"id": item + 1, "name": "b"},
        headers={**bearer(token_for("order-writer")), **key},
    )
    assert theirs.status_code == 200, theirs.text  # their own key space: not a reuse
    assert count(demo_database, f"Id IN ({item}, {item + 1})") == 2


@pytest.mark.parametrize("value", [b"", b"x" * 256, b"tab\there", "é".encode()])
async def test_malformed_keys_are_400(
    http: httpx.AsyncClient, headers: dict[str, str], value: bytes
) -> None:
    response = await http.post(
        "/items",
        json={"id": new_id(), "name": "a"},
        headers=[
            *((k.encode(), v.encode()) for k, v in headers.items()),
            (b"idempotency-key", value),
        ],
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "idempotency-key-invalid"


async def test_two_keys_are_400_and_a_key_on_a_read_is_ignored(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    two = await http.post(
        "/items",
        json={"id": new_id(), "name": "a"},
        headers=[*headers.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    assert two.status_code == 400 and two.json()["code"] == "idempotency-key-invalid"
    read = await http.get("/items/1", headers={**headers, "Idempotency-Key": "\t"})
    assert read.status_code == 200, read.text


async def test_keys_expire(
    demo_database: str, idp: Any, tmp_path: Path, headers: dict[str, str]
) -> None:
    policy = policy_text(DATABASE, POLICY)
    async with gateway_on(
        tmp_path, demo_database, policy, issuer=idp.issuer, idempotency_ttl_seconds=1
    ) as (_, http):
        item = new_id()
        keyed = {**headers, "Idempotency-Key": f"short-{item}"}
        first = await http.post("/items", json={"id": item, "name": "a"}, headers=keyed)
        assert first.status_code == 200, first.text
        reused = await http.post("/items", json={"id": item + 1, "name": "a"}, headers=keyed)
        assert reused.status_code == 422, reused.text
        await asyncio.sleep(1.3)
        later = await http.post("/items", json={"id": item + 1, "name": "a"}, headers=keyed)
        assert later.status_code == 200, later.text  # expired: a new request
        assert count(demo_database, f"Id IN ({item}, {item + 1})") == 2


async def test_without_the_table_a_keyed_write_is_500_and_runs_nothing(
    demo_database: str, idp: Any, tmp_path: Path, headers: dict[str, str]
) -> None:
    make_database(demo_database, "sgnokeys", [d for d in DDL if d not in IDEMPOTENCY_DDL], SEED)
    async with gateway_on(
        tmp_path, demo_database, policy_text("sgnokeys", POLICY), issuer=idp.issuer
    ) as (app, http):
        analysis = app.executor.analysis(app.policy)
        assert analysis is not None and analysis.idempotency_ready == {"writer": False}
        item = new_id()
        keyed = {**headers, "Idempotency-Key": "k"}
        response = await http.post("/items", json={"id": item, "name": "a"}, headers=keyed)
        assert response.status_code == 500, response.text
        assert response.json()["code"] == "idempotency-table-missing"
        plain = await http.post("/items", json={"id": item, "name": "a"}, headers=headers)
        assert plain.status_code == 200, plain.text  # without a key, writes work
    sql = f"SELECT COUNT(*) FROM Items WHERE Id = {item}"  # noqa: S608
    rows = query_rows(demo_database, "sgnokeys", sql)
    assert rows == [[1]]


# -- the in-transaction hook -------------------------------------------------------------------


async def test_in_transaction_work_commits_with_the_write_or_not_at_all(
    stack: tuple[Gateway, httpx.AsyncClient], demo_database: str
) -> None:
    app = stack[0]
    query = app.policy.queries["add"]
    seen: list[Result] = []

    async def log_it(transaction: Any, result: Result) -> None:
        seen.append(result)
        transaction.insert("HookLog", ("Id", "Note"), [(ok_id, f"rows={result.row_count}")])

    def fail(transaction: Any, result: Result) -> None:
        transaction.insert("HookLog", ("Id", "Note"), [(bad_id, "never")])
        raise RuntimeError("the hook refuses")

    ok_id, bad_id = new_id(), new_id() + 1
    tags = tags_for("add", "POST", "/items", "hook-test")

    def key(item: int) -> Any:
        values = {"id": item, "name": "h", "qty": 1}
        return key_for(f"hook-{item}", issuer="i", subject="s", method="POST", route="/items",
                       query="add", values=values, ttl_seconds=60)  # fmt: skip

    result = await app.executor.run(
        query, {"id": ok_id, "name": "h", "qty": 1}, tags=tags, idempotency=key(ok_id),
        in_transaction=log_it,
    )  # fmt: skip
    assert result.row_count == 1 and result.commit_timestamp and seen == [result]
    with pytest.raises(RuntimeError, match="the hook refuses"):
        await app.executor.run(
            query, {"id": bad_id, "name": "h", "qty": 1}, tags=tags, idempotency=key(bad_id),
            in_transaction=fail,
        )  # fmt: skip
    ids = f"{ok_id}, {bad_id}"
    hook = query_rows(demo_database, DATABASE, f"SELECT Id, Note FROM HookLog WHERE Id IN ({ids})")  # noqa: S608
    assert hook == [[ok_id, "rows=1"]]
    assert count(demo_database, f"Id IN ({ids})") == 1
    hashes = f"'{key(ok_id).key_hash}', '{key(bad_id).key_hash}'"
    sql = f"SELECT KeyHash FROM SpangateIdempotency WHERE KeyHash IN ({hashes})"  # noqa: S608
    records = query_rows(demo_database, DATABASE, sql)
    assert records == [[key(ok_id).key_hash]]  # the failed write left no record either


# -- limits ------------------------------------------------------------------------------------


async def test_too_many_mutations_are_refused_before_sending(
    http: httpx.AsyncClient, headers: dict[str, str], demo_database: str
) -> None:
    base = new_id()
    ids = list(range(base, base + 40_001))  # 40,001 rows x 2 columns = 80,002 > 80,000
    response = await http.post("/bulk", json={"ids": ids}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "too-many-mutations"
    assert count(demo_database, f"Id >= {base} AND Id <= {base + 40_000}") == 0
    small = await http.post("/bulk", json={"ids": ids[:3]}, headers=headers)
    assert small.status_code == 200 and small.json()["row_count"] == 3


async def test_a_write_past_its_timeout_is_504(
    stack: tuple[Gateway, httpx.AsyncClient], demo_database: str
) -> None:
    app = stack[0]
    query = app.policy.queries["add"]
    tiny = query.model.model_copy(update={"timeout": "1ms"})
    hurried = type(query)(query.name, tiny, query.sql, query.params)
    with pytest.raises(SpannerError) as caught:
        await app.executor.run(hurried, {"id": new_id(), "name": "t", "qty": 1},
                               tags=tags_for("add", "POST", "/items", "t"))  # fmt: skip
    assert caught.value.status == 504 and caught.value.code == "timeout"
    after = await app.executor.run(query, {"id": new_id(), "name": "t", "qty": 1},
                                   tags=tags_for("add", "POST", "/items", "t"))  # fmt: skip
    assert after.row_count == 1  # the cut transaction did not block the next write
