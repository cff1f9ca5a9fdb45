"""Every Spanner type both ways through the HTTP API, on a table of every type (real emulator).

A JSON body is written with INSERT ... THEN RETURN, read back with SELECT, and echoed from the
query string by ``SELECT @p AS ...``: each value must come back in its one JSON representation,
without losing anything (INT64 beyond 2^53, NUMERIC's 38 digits, TIMESTAMP nanoseconds, NaN and
the infinities, BYTES that look like base64, JSON arrays, scalars and nested objects).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

DATABASE = "sgtypes"
SCALARS = ["BOOL", "INT64", "FLOAT64", "NUMERIC", "STRING", "BYTES", "DATE", "TIMESTAMP", "JSON"]
COLUMNS = {  # column -> Spanner type
    "B": "BOOL", "I": "INT64", "F": "FLOAT64", "N": "NUMERIC", "S": "STRING", "Y": "BYTES",
    "D": "DATE", "T": "TIMESTAMP", "J": "JSON",
}  # fmt: skip
ARRAYS = {f"X{c}": t for c, t in COLUMNS.items()}  # X: an array of


def _ddl_type(kind: str) -> str:
    return {"STRING": "STRING(MAX)", "BYTES": "BYTES(MAX)"}.get(kind, kind)


DDL = [
    "CREATE TABLE Everything (Id STRING(64) NOT NULL, "
    + ", ".join(f"{c} {_ddl_type(t)}" for c, t in COLUMNS.items())
    + ", "
    + ", ".join(f"{c} ARRAY<{_ddl_type(t)}>" for c, t in ARRAYS.items())
    + ") PRIMARY KEY (Id)"
]
ALL = {**COLUMNS, **ARRAYS}
NAMES = ", ".join(ALL)
PARAMS = ", ".join(f"@{c.lower()}" for c in ALL)


def _params(indent: str) -> str:
    lines = [f"{indent}id: {{type: STRING, max_length: 64, pattern: '^[A-Za-z0-9-]+$'}}"]
    for column, kind in COLUMNS.items():
        lines.append(f"{indent}{column.lower()}: {{type: {kind}, nullable: true}}")
    for column, kind in ARRAYS.items():
        lines.append(f"{indent}{column.lower()}: {{type: 'ARRAY<{kind}>', nullable: true}}")
    return "\n".join(lines)


ECHO = ", ".join(f"@{c.lower()} AS {c}" for c in ALL if c not in ("J", "XJ"))
POLICY = f"""\
identities:
  reader: {{database_role: types_reader}}
  writer: {{database_role: types_writer}}
queries:
  put_everything:
    identity: writer
    sql: INSERT INTO Everything (Id, {NAMES}) VALUES (@id, {PARAMS}) THEN RETURN *
    params:
{_params("      ")}
  get_everything:
    identity: reader
    sql: SELECT Id, {NAMES} FROM Everything WHERE Id = @id
    params:
      id: {{type: STRING}}
  echo:
    identity: reader
    sql: SELECT {ECHO}, TO_JSON_STRING(@j) AS J, @xj AS XJ
    params:
{_params("      ").split(chr(10), 1)[1]}
routes:
  - {{path: /everything, method: POST, query: put_everything, allow: [tester]}}
  - {{path: "/everything/{{id}}", method: GET, query: get_everything, allow: [tester]}}
  - {{path: /echo, method: GET, query: echo, allow: [tester]}}
"""  # noqa: S608

BIG = 2**63 - 1
SMALL = -(2**63)
ALL_BYTES = base64.b64encode(bytes(range(256))).decode()
ABCD = base64.b64encode(b"abcd").decode()  # "YWJjZA==": raw b"abcd" would be taken as base64

ROWS: dict[str, dict[str, Any]] = {
    "extremes": {
        "b": True,
        "i": BIG,
        "f": 1.7976931348623157e308,
        "n": "99999999999999999999999999999.999999999",
        "s": "héllo wörld ✓ 😀",
        "y": ALL_BYTES,
        "d": "9999-12-31",
        "t": "2026-01-31T12:00:00.123456789Z",
        "j": {"a": [1, 2.5, "x", None, True], "b": {"c": {"d": []}}, "e": 9007199254740993},
        "xb": [True, None, False],
        "xi": [SMALL, None, BIG, 0],
        "xf": [1.5, "NaN", None, "Infinity", "-Infinity", 5e-324],
        "xn": ["-0.000000001", None, "12345678901234567890123456789"],
        "xs": ["", None, "ü"],
        "xy": [ABCD, None, ""],
        "xd": ["0001-01-01", None],
        "xt": ["0001-01-01T00:00:00Z", None, "9999-12-31T23:59:59.999999999Z"],
        "xj": [{"k": [1, {"z": None}]}, None, [1, "two"], "scalar", 3],
    },
    "special floats": {"f": "NaN", "xf": ["-Infinity"]},
    "infinity": {"f": "Infinity", "i": SMALL, "n": "-99999999999999999999999999999.999999999"},
    "minus infinity": {"f": "-Infinity", "j": [1, 2, 3]},
    "json scalar": {"j": "just a string", "y": ABCD},
    "json number": {"j": 12.5, "b": False},
    "all null": {},
}


def expected(values: dict[str, Any]) -> dict[str, Any]:
    """The representation the gateway must return: every column, null when not given."""
    return {c: values.get(c.lower()) for c in ALL}


@pytest.fixture(scope="module")
async def stack(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    make_database(demo_database, DATABASE, DDL)
    policy = policy_text(DATABASE, POLICY)
    async with gateway_on(
        tmp_path_factory.mktemp("types"), demo_database, policy, issuer=idp.issuer
    ) as (_, http):
        yield http


@pytest.fixture(scope="module")
def token(token_for: Token) -> str:
    return token_for("support-console")


@pytest.mark.parametrize("name", list(ROWS))
async def test_every_type_round_trips_through_write_and_read(
    stack: httpx.AsyncClient, token: str, name: str
) -> None:
    values = ROWS[name]
    row_id = name.replace(" ", "-")
    written = await stack.post("/everything", json={"id": row_id, **values}, headers=bearer(token))
    assert written.status_code == 200, written.text
    body = written.json()
    assert body["row_count"] == 1 and body["truncated"] is False
    assert body["commit_timestamp"].endswith("Z")
    assert body["rows"] == [{"Id": row_id, **expected(values)}]  # THEN RETURN *
    read = await stack.get(f"/everything/{row_id}", headers=bearer(token))
    assert read.status_code == 200, read.text
    assert read.json()["rows"] == [{"Id": row_id, **expected(values)}]


async def test_timestamps_normalise_to_utc_and_keep_nanoseconds(
    stack: httpx.AsyncClient, token: str
) -> None:
    values = {"t": "2026-01-31T14:00:00.000000001+02:00", "xt": ["2026-01-31T12:00:00.5-01:30"]}
    written = await stack.post("/everything", json={"id": "tz", **values}, headers=bearer(token))
    assert written.status_code == 200, written.text
    row = written.json()["rows"][0]
    assert row["T"] == "2026-01-31T12:00:00.000000001Z"
    assert row["XT"] == ["2026-01-31T13:30:00.5Z"]


async def test_numeric_keeps_its_value(stack: httpx.AsyncClient, token: str) -> None:
    written = await stack.post(
        "/everything",
        json={"id": "numeric", "n": "12.50", "xn": ["0.100000000", "7"]},
        headers=bearer(token),
    )
    assert written.status_code == 200, written.text
    row = written.json()["rows"][0]
    assert row["N"] == "12.5"  # the same number: Spanner keeps no trailing zeros
    assert row["XN"] == ["0.1", "7"]


ECHO_QUERY: list[tuple[str, str]] = [
    ("b", "true"),
    ("i", str(BIG)),
    ("f", "-2.5e-300"),
    ("n", "-12345678901234567890123456789.123456789"),
    ("s", "a&b=c ü"),
    ("y", ABCD),
    ("d", "2026-02-28"),
    ("t", "1970-01-01T00:00:00.000000999Z"),
    ("j", '{"x": [1, null]}'),
    ("xb", "false"), ("xb", "true"),
    ("xi", "-1"), ("xi", str(SMALL)),
    ("xf", "Infinity"), ("xf", "0.5"),
    ("xn", "1e-9"),
    ("xs", "x"), ("xs", ""),
    ("xy", ALL_BYTES),
    ("xd", "2000-02-29"),
    ("xt", "2000-01-01T00:00:00Z"),
    ("xj", '"s"'), ("xj", "[1]"),
]  # fmt: skip


async def test_every_type_from_the_query_string(stack: httpx.AsyncClient, token: str) -> None:
    response = await stack.get("/echo", params=ECHO_QUERY, headers=bearer(token))
    assert response.status_code == 200, response.text
    row = response.json()["rows"][0]
    assert row["B"] is True and row["I"] == BIG and row["F"] == -2.5e-300
    assert row["N"] == "-12345678901234567890123456789.123456789"
    assert row["S"] == "a&b=c ü" and row["Y"] == ABCD and row["D"] == "2026-02-28"
    assert row["T"] == "1970-01-01T00:00:00.000000999Z"
    assert row["J"] == '{"x":[1,null]}'  # TO_JSON_STRING of the JSON parameter
    assert row["XB"] == [False, True] and row["XI"] == [-1, SMALL]
    assert row["XF"] == ["Infinity", 0.5] and row["XN"] == ["0.000000001"]
    assert row["XS"] == ["x", ""] and row["XY"] == [ALL_BYTES]
    assert row["XD"] == ["2000-02-29"] and row["XT"] == ["2000-01-01T00:00:00Z"]
    assert row["XJ"] == ["s", [1]]


async def test_omitted_nullable_parameters_echo_null(stack: httpx.AsyncClient, token: str) -> None:
    response = await stack.get("/echo", headers=bearer(token))
    assert response.status_code == 200, response.text
    row = response.json()["rows"][0]
    assert set(row) == set(ALL) and row.pop("J") == "null"  # TO_JSON_STRING(NULL)
    assert all(v is None for v in row.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("i", 2**63),
        ("i", 1.5),
        ("f", "nan"),
        ("n", 0.1),
        ("n", "1.0000000001"),
        ("y", "not base64!"),
        ("d", "2026-02-30"),
        ("t", "2026-01-31 12:00"),
        ("b", "true"),
        ("xi", [1, "x"]),
    ],
)
async def test_values_that_do_not_fit_are_400(
    stack: httpx.AsyncClient, token: str, field: str, value: Any
) -> None:
    response = await stack.post(
        "/everything", json={"id": "bad", field: value}, headers=bearer(token)
    )
    assert response.status_code == 400, response.text
    assert response.json()["param"] == field


def test_every_scalar_type_is_covered() -> None:
    assert sorted(set(COLUMNS.values())) == sorted(SCALARS)
