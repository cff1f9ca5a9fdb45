"""Spanner PLANs every statement at start-up and with ``spangate policy check --database``: a
misspelt column fails the load naming the query; the plan's fields type the responses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from spanner_stack import gateway_on

from gateway.cli import main
from gateway.errors import PolicyError

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
version: 1
spanner: {project: demo-project, instance: demo, database: shop}
issuers:
  okta: {issuer: "${OKTA_ISSUER}", audience: "api://shop", preset: okta}
identities:
  shop_reader: {database_role: shop_reader}
  shop_writer: {database_role: shop_writer}
roles:
  tester: [{groups: [support]}]
"""

BROKEN = (
    HEAD  # noqa: S608 - a policy document, not SQL built from values
    + """\
queries:
  good:
    identity: shop_reader
    sql: SELECT OrderId, TotalCents FROM Orders WHERE TenantId = @tenant
    params: {tenant: {type: STRING}}
  misspelt_column:
    identity: shop_reader
    sql: SELECT OrderIdd FROM Orders
  misspelt_table:
    identity: shop_reader
    sql: SELECT OrderId FROM Orderz
  wrong_param_type:
    identity: shop_reader
    sql: SELECT OrderId FROM Orders WHERE TotalCents = @cents
    params: {cents: {type: STRING}}
  bad_update:
    identity: shop_writer
    sql: UPDATE Orders SET Statuss = 'PAID' WHERE TenantId = @tenant AND OrderId = @id
    params: {tenant: {type: STRING}, id: {type: STRING}}
  unnamed:
    identity: shop_reader
    sql: SELECT COUNT(*) FROM Orders
  twice:
    identity: shop_reader
    sql: SELECT OrderId, OrderId FROM Orders
routes:
  - {path: /a, method: GET, query: good, allow: [tester]}
  - {path: /b, method: GET, query: misspelt_column, allow: [tester]}
  - {path: /c, method: GET, query: misspelt_table, allow: [tester]}
  - {path: /d, method: GET, query: wrong_param_type, allow: [tester]}
  - {path: /e, method: POST, query: bad_update, allow: [tester]}
  - {path: /f, method: GET, query: unnamed, allow: [tester]}
  - {path: /g, method: GET, query: twice, allow: [tester]}
"""
)


async def test_start_up_fails_naming_every_refused_query(
    demo_database: str, idp: Any, tmp_path: Path
) -> None:
    with pytest.raises(PolicyError) as caught:
        async with gateway_on(tmp_path, demo_database, BROKEN, issuer=idp.issuer):
            pytest.fail("a policy Spanner refuses must not start")
    problems = {p.where: p for p in caught.value.problems}
    assert set(problems) == {
        "queries.misspelt_column.sql",
        "queries.misspelt_table.sql",
        "queries.wrong_param_type.sql",
        "queries.bad_update.sql",
        "queries.unnamed.sql",
        "queries.twice.sql",
    }
    column = problems["queries.misspelt_column.sql"]
    assert "Unrecognized name: OrderIdd; Did you mean OrderId?" in column.message
    assert "misspelt_column" in column.message
    line = BROKEN.splitlines().index("    sql: SELECT OrderIdd FROM Orders") + 1
    assert column.file.endswith("policy.yaml") and (column.line, column.column) == (line, 10)
    assert "Table not found: Orderz" in problems["queries.misspelt_table.sql"].message
    assert "INT64, STRING" in problems["queries.wrong_param_type.sql"].message
    assert "Statuss" in problems["queries.bad_update.sql"].message
    assert "has no name" in problems["queries.unnamed.sql"].message
    assert "share a name: OrderId" in problems["queries.twice.sql"].message


async def test_the_plan_types_each_querys_columns(
    demo_database: str, idp: Any, tmp_path: Path
) -> None:
    policy = (REPO / "policy.example.yaml").read_text()
    async with gateway_on(tmp_path, demo_database, policy, issuer=idp.issuer) as (app, _):
        analysis = app.executor.analysis(app.policy)
        assert analysis is not None
        get_order = {c.name: c.type for c in analysis.shapes["get_order"].columns}
        assert get_order == {
            "OrderId": "STRING",
            "CustomerId": "STRING",
            "Status": "STRING",
            "TotalCents": "INT64",
            "Currency": "STRING",
            "CreatedAt": "TIMESTAMP",
        }
        assert analysis.shapes["create_order"].columns == ()  # DML without THEN RETURN
        assert set(analysis.shapes) == set(app.policy.queries)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_policy_check_database(
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", demo_database)
    monkeypatch.setenv("OKTA_ISSUER", idp.issuer)
    example = REPO / "policy.example.yaml"
    assert main(["policy", "check", str(example), "--database"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{example}: ok (")
    assert "get_order: OrderId STRING, CustomerId STRING" in out and "TotalCents INT64" in out
    broken = _write(tmp_path, BROKEN)
    assert main(["policy", "check", str(broken), "--database"]) == 2
    out, err = capsys.readouterr()
    assert "queries.misspelt_column.sql" in err and "Did you mean OrderId?" in err
    assert "ok" not in out  # "ok" only when everything passed, Spanner's PLAN included
    assert main(["policy", "check", str(broken)]) == 0  # without --database
    assert capsys.readouterr().out.startswith(f"{broken}: ok (")


def test_policy_check_database_says_when_spanner_is_unreachable(
    idp: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli.db import check_on_database
    from gateway.dev.ports import free_port
    from gateway.runtime import load_compiled

    monkeypatch.setenv("SPANNER_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    policy = load_compiled(REPO / "policy.example.yaml", {"OKTA_ISSUER": idp.issuer})
    assert check_on_database(policy, connect_timeout=0.5, ok_line="policy.yaml: ok") == 1
    out, err = capsys.readouterr()
    assert "cannot connect to Spanner" in err and "ok" not in out
