"""A PostgreSQL-dialect Spanner database behind the gateway (real emulator, real OpenID provider).

The example shop exists in both dialects (``dev/schema*.sql``, ``dev/seed*.sql``); the same
personas ask the same things of a gateway on each (``policy.example.yaml`` and
``policy.example.postgresql.yaml``) and must get the same answers. Every type makes the round trip
through HTTP on a table of every PostgreSQL-dialect type; the database's dialect is checked
against the policy's at start-up; the PLAN analysis speaks PostgreSQL.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

from gateway.dev.database import load_demo_sql
from gateway.errors import PolicyError
from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy
from gateway.spanner.ddl import shipped_ddl

REPO = Path(__file__).resolve().parents[2]
PG_DB, GSQL_DB = "shoppg", "shopgsql"
ENV = {"OKTA_ISSUER": "http://127.0.0.1:1/x"}

Pair = tuple[httpx.AsyncClient, httpx.AsyncClient]


def _shop(host: str, name: str, dialect: str, policy: str) -> None:
    ddl, dml = load_demo_sql(REPO, dialect)
    compiled = compile_policy(load_policy(REPO / policy, env=ENV))
    make_database(host, name, [*ddl, *shipped_ddl(compiled)], dml, dialect=dialect)


@pytest.fixture(scope="module")
async def shops(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pair]:
    """(GoogleSQL shop, PostgreSQL shop): fresh databases of the same seed, a gateway on each."""
    _shop(demo_database, GSQL_DB, "googlesql", "policy.example.yaml")
    _shop(demo_database, PG_DB, "postgresql", "policy.example.postgresql.yaml")
    gsql_policy = (REPO / "policy.example.yaml").read_text()
    pg_policy = (REPO / "policy.example.postgresql.yaml").read_text()
    async with (
        gateway_on(
            tmp_path_factory.mktemp("gsql"),
            demo_database,
            gsql_policy,
            issuer=idp.issuer,
            spanner_database=GSQL_DB,
        ) as (_, gsql),
        gateway_on(
            tmp_path_factory.mktemp("pg"),
            demo_database,
            pg_policy,
            issuer=idp.issuer,
            spanner_database=PG_DB,
        ) as (_, pg),
    ):
        yield gsql, pg


def _comparable(response: httpx.Response) -> tuple[int, Any]:
    body = response.json()
    if response.headers["content-type"].startswith("application/problem+json"):
        return response.status_code, body.get("code")
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("next_cursor", "commit_timestamp")}
    return response.status_code, body


READS = [
    ("support-console", "/v1/orders/O-1001"),
    ("support-t2", "/v1/orders/O-1001"),
    ("order-agent", "/v1/orders/O-1003"),
    ("order-agent", "/v1/orders/O-1001/items"),
    ("support-t2", "/v1/orders/O-1001/items"),
    ("support-console", "/v1/customers/C-1"),  # Email masked
    ("support-lead", "/v1/customers/C-1"),  # Email clear
    ("order-agent", "/v1/customers/C-1"),  # people only: 403
    ("support-console", "/v1/orders?status=PAID"),
    ("support-t2", "/v1/orders?min_total_cents=5000"),
    ("support-console", "/v1/orders/O-9999"),  # no row
    ("suspended-support", "/v1/orders/O-1001"),  # a deny role: 403
    ("outsider", "/v1/orders/O-1001"),  # no role: 403
    ("support-console", "/v1/orders/" + "x" * 40),  # too long: 400
    ("support-console", "/v1/orders?status=LOST"),  # not in the enum: 400
]


@pytest.mark.parametrize(("persona", "path"), READS)
async def test_the_same_persona_gets_the_same_answer_from_either_dialect(
    shops: Pair, token_for: Token, persona: str, path: str
) -> None:
    gsql, pg = shops
    headers = bearer(token_for(persona))
    expected = await gsql.get(path, headers=headers)
    got = await pg.get(path, headers=headers)
    assert _comparable(got) == _comparable(expected), got.text
    assert expected.status_code in (200, 400, 403)


async def test_reads_answer_what_the_seed_holds(shops: Pair, token_for: Token) -> None:
    _, pg = shops
    order = await pg.get("/v1/orders/O-1001", headers=bearer(token_for("support-t2")))
    assert order.json()["rows"] == [{
        "OrderId": "O-1001", "CustomerId": "C-1", "Status": "OPEN", "TotalCents": 126400,
        "Currency": "EUR", "CreatedAt": "2026-02-02T10:00:00Z",
    }]  # fmt: skip
    masked = await pg.get("/v1/customers/C-1", headers=bearer(token_for("support-console")))
    assert masked.json()["rows"][0]["Email"] == "***"


async def test_pages_follow_their_cursors_alike(shops: Pair, token_for: Token) -> None:
    headers = bearer(token_for("support-t2"))
    pages: list[list[list[Any]]] = []
    for client in shops:
        rows: list[list[Any]] = []
        params: dict[str, Any] = {"limit": 2}
        while True:
            page = await client.get("/v1/orders", params=params, headers=headers)
            assert page.status_code == 200, page.text
            rows.append([r["OrderId"] for r in page.json()["rows"]])
            cursor = page.json().get("next_cursor")
            if cursor is None:
                break
            params = {"limit": 2, "cursor": cursor}
        pages.append(rows)
    assert pages[1] == pages[0] == [["O-1003", "O-1002"], ["O-1001"]]


async def test_a_write_and_its_idempotent_replay(shops: Pair, token_for: Token) -> None:
    _, pg = shops
    headers = {**bearer(token_for("order-writer")), "Idempotency-Key": "pg-write-1"}
    body = {"order_id": "O-7001", "customer_id": "C-2", "total_cents": 4200}
    first = await pg.post("/v1/orders", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["row_count"] == 1 and first.json()["commit_timestamp"].endswith("Z")
    again = await pg.post("/v1/orders", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["commit_timestamp"] == first.json()["commit_timestamp"]  # replayed
    read = await pg.get("/v1/orders/O-7001", headers=bearer(token_for("support-console")))
    row = read.json()["rows"][0]
    assert (row["Status"], row["TotalCents"], row["Currency"]) == ("OPEN", 4200, "USD")
    assert row["CreatedAt"] == first.json()["commit_timestamp"]


async def test_a_policy_of_the_other_dialect_does_not_start(
    demo_database: str, shops: Pair, idp: Any, tmp_path: Path
) -> None:
    gsql_policy = (REPO / "policy.example.yaml").read_text()
    (tmp_path / "a").mkdir()
    with pytest.raises(PolicyError) as caught:
        async with gateway_on(
            tmp_path / "a", demo_database, gsql_policy, issuer=idp.issuer,
            spanner_database=PG_DB,
        ):  # fmt: skip
            pass
    [problem] = caught.value.problems
    assert problem.where == "spanner.dialect"
    assert problem.message == (
        "the database shoppg is a PostgreSQL-dialect database, but the policy's statements are "
        "GoogleSQL (spanner.dialect: googlesql, the default): set spanner.dialect: postgresql "
        "and write the statements in that dialect"
    )
    pg_policy = (REPO / "policy.example.postgresql.yaml").read_text()
    (tmp_path / "b").mkdir()
    with pytest.raises(PolicyError, match="shopgsql is a GoogleSQL-dialect database"):
        async with gateway_on(
            tmp_path / "b", demo_database, pg_policy, issuer=idp.issuer,
            spanner_database=GSQL_DB,
        ):  # fmt: skip
            pass


PG_HEADER = policy_text(PG_DB, "").replace(
    f"database: {PG_DB}}}", f"database: {PG_DB}, dialect: postgresql}}"
)


async def test_the_plan_analysis_speaks_postgresql(
    demo_database: str, shops: Pair, idp: Any, tmp_path: Path
) -> None:
    policy = PG_HEADER + """\
identities:
  reader: {database_role: shop_reader}
queries:
  bad:
    identity: reader
    sql: SELECT order_idd FROM orders WHERE tenant_id = $1
    params:
      tenant: {type: varchar, from: claim.tenant}
routes:
  - {path: /bad, method: GET, query: bad, allow: [tester]}
"""  # noqa: S608
    with pytest.raises(PolicyError) as caught:
        async with gateway_on(tmp_path, demo_database, policy, issuer=idp.issuer):
            pass
    [problem] = caught.value.problems
    assert problem.message.startswith(
        "Spanner refuses query 'bad': [ERROR] column \"order_idd\" does not exist"
    ), problem.message


# -- every type, both ways ----------------------------------------------------------------------
TYPES_DB = "pgtypes"
COLUMNS = {  # column -> (PostgreSQL type, the policy's type)
    "b": ("bool", "bool"), "i": ("int8", "int8"), "f": ("float8", "float8"),
    "n": ("numeric", "numeric"), "s": ("varchar", "varchar"), "y": ("bytea", "bytea"),
    "d": ("date", "date"), "t": ("timestamptz", "timestamptz"), "j": ("jsonb", "jsonb"),
}  # fmt: skip
ARRAYS = {f"x{c}": (f"{t}[]", f"{p}[]") for c, (t, p) in COLUMNS.items()}
ALL = {**COLUMNS, **ARRAYS}
TYPES_DDL = [
    "CREATE TABLE everything (id varchar(64) NOT NULL, "
    + ", ".join(f"{c} {t}" for c, (t, _) in ALL.items())
    + ", PRIMARY KEY (id))"
]
NAMES = ", ".join(ALL)
PLACEHOLDERS = ", ".join(f"${k}" for k in range(2, len(ALL) + 2))
PARAMS = "\n".join(f"      {c}: {{type: '{p}', nullable: true}}" for c, (_, p) in ALL.items())
TYPES_POLICY = (
    PG_HEADER.replace(f"database: {PG_DB},", f"database: {TYPES_DB},")  # noqa: S608
    + f"""\
identities:
  reader: {{database_role: types_reader}}
  writer: {{database_role: types_writer}}
queries:
  put_everything:
    identity: writer
    sql: INSERT INTO everything (id, {NAMES}) VALUES ($1, {PLACEHOLDERS}) RETURNING *
    params:
      id: {{type: varchar, max_length: 64}}
{PARAMS}
  get_everything:
    identity: reader
    sql: SELECT id, {NAMES} FROM everything WHERE id = $1
    params:
      id: {{type: varchar}}
  echo:
    identity: reader
    sql: SELECT {", ".join(f"${k} AS {c}" for k, c in enumerate(ALL, start=1))}
    params:
{PARAMS}
routes:
  - {{path: /everything, method: POST, query: put_everything, allow: [tester]}}
  - {{path: "/everything/{{id}}", method: GET, query: get_everything, allow: [tester]}}
  - {{path: /echo, method: GET, query: echo, allow: [tester]}}
"""  # noqa: S608
)
BIG = 2**63 - 1
ALL_BYTES = base64.b64encode(bytes(range(256))).decode()
WIDE = "1" * 40 + "." + "2" * 20  # past GoogleSQL's NUMERIC (29 digits, 9 after the point)
ROWS: dict[str, dict[str, Any]] = {
    "extremes": {
        "b": True, "i": BIG, "f": 1.7976931348623157e308, "n": WIDE, "s": "héllo ✓ 😀",
        "y": ALL_BYTES, "d": "9999-12-31", "t": "2026-01-31T12:00:00.123456Z",
        "j": {"a": [1, 2.5, "x", None, True], "b": {"c": []}},
        "xb": [True, None], "xi": [-(2**63), None, BIG], "xf": [1.5, "NaN", None, "-Infinity"],
        "xn": ["-0.000000001", None, "NaN"], "xs": ["", None, "ü"], "xy": [ALL_BYTES, None],
        "xd": ["0001-01-01", None], "xt": ["0001-01-01T00:00:00Z", None],
        "xj": [{"k": [1]}, None, [1, "two"], "scalar", 3],
    },
    "numeric nan": {"n": "NaN", "f": "Infinity"},
    "json scalar": {"j": "just a string"},
    "all null": {},
}  # fmt: skip


@pytest.fixture(scope="module")
async def types_stack(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    make_database(demo_database, TYPES_DB, TYPES_DDL, dialect="postgresql")
    async with gateway_on(
        tmp_path_factory.mktemp("pgtypes"), demo_database, TYPES_POLICY, issuer=idp.issuer
    ) as (_, http):
        yield http


@pytest.mark.parametrize("name", list(ROWS))
async def test_every_type_round_trips_through_write_and_read(
    types_stack: httpx.AsyncClient, token_for: Token, name: str
) -> None:
    headers = bearer(token_for("support-console"))
    values = ROWS[name]
    row_id = name.replace(" ", "-")
    expected = {"id": row_id, **{c: values.get(c) for c in ALL}}
    written = await types_stack.post("/everything", json={"id": row_id, **values}, headers=headers)
    assert written.status_code == 200, written.text
    assert written.json()["rows"] == [expected]  # RETURNING *
    read = await types_stack.get(f"/everything/{row_id}", headers=headers)
    assert read.status_code == 200, read.text
    assert read.json()["rows"] == [expected]


async def test_every_type_from_the_query_string(
    types_stack: httpx.AsyncClient, token_for: Token
) -> None:
    query = [
        ("b", "true"), ("i", str(BIG)), ("n", WIDE), ("s", "a&b ü"), ("y", ALL_BYTES),
        ("d", "2026-02-28"), ("t", "1970-01-01T00:00:00.000001Z"), ("j", '{"x": [1, null]}'),
        ("xi", "-1"), ("xi", "2"), ("xn", "NaN"), ("xt", "2000-01-01T00:00:00+01:00"),
    ]  # fmt: skip
    response = await types_stack.get(
        "/echo", params=query, headers=bearer(token_for("support-console"))
    )
    assert response.status_code == 200, response.text
    row = response.json()["rows"][0]
    assert (row["b"], row["i"], row["n"], row["s"]) == (True, BIG, WIDE, "a&b ü")
    assert (row["y"], row["d"], row["t"]) == (ALL_BYTES, "2026-02-28", "1970-01-01T00:00:00.000001Z")
    assert row["j"] == {"x": [1, None]}
    assert (row["xi"], row["xn"], row["xt"]) == ([-1, 2], ["NaN"], ["1999-12-31T23:00:00Z"])
    assert row["f"] is None and row["xj"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("i", 2**63), ("n", "Infinity"), ("n", "0." + "1" * 16384), ("y", "not base64!"),
        # jsonb holds no U+0000: Spanner answers FAILED_PRECONDITION (409), the gateway 400 first
        ("j", "a\u0000b"), ("j", {"k\u0000": 1}), ("xj", [{"k": ["\u0000"]}]),
    ],
)
async def test_values_that_do_not_fit_are_400(
    types_stack: httpx.AsyncClient, token_for: Token, field: str, value: Any
) -> None:
    response = await types_stack.post(
        "/everything", json={"id": "bad", field: value},
        headers=bearer(token_for("support-console")),
    )  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["param"] == field
    assert response.json()["code"] == "param-invalid"
