"""``spangate grants``: the least privilege each identity needs, derived from its statements; the
DDL tried on the emulator (which parses fine-grained access control without enforcing it); the
``--check`` comparison; and ``spangate init-db``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from spanner_stack import INSTANCE, PROJECT, make_database, query_rows

from gateway.cli import main
from gateway.dev.database import emulator_client, load_demo_sql, split_statements
from gateway.runtime import load_compiled
from gateway.spanner.grants import Catalog, catalog_from_ddl, check, ddl, needs_of

REPO = Path(__file__).resolve().parents[2]
SCHEMA = catalog_from_ddl(load_demo_sql(REPO)[0])

HEAD = """\
version: 1
spanner: {project: demo-project, instance: demo, database: shop}
issuers:
  okta: {issuer: "https://idp.example/oauth2/default", audience: "api://shop", preset: okta}
roles:
  tester: [{groups: [support]}]
"""


def _policy(tmp_path: Path, body: str) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + body)
    return load_compiled(path, {})


def test_example_policy_grants() -> None:
    policy = load_compiled(REPO / "policy.example.yaml", {})
    assert ddl(needs_of(policy, SCHEMA), SCHEMA) == [
        "CREATE ROLE shop_reader",
        "GRANT SELECT(TenantId, CustomerId, Name, Email, CreatedAt) ON TABLE Customers "
        "TO ROLE shop_reader",
        "GRANT SELECT(TenantId, OrderId, ItemId, Sku, Quantity, UnitPriceCents) ON TABLE "
        "OrderItems TO ROLE shop_reader",
        "GRANT SELECT(TenantId, OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt) "
        "ON TABLE Orders TO ROLE shop_reader",
        "CREATE ROLE shop_writer",
        "GRANT SELECT(TenantId, OrderId, Status) ON TABLE Orders TO ROLE shop_writer",  # cancel
        "GRANT INSERT ON TABLE Orders TO ROLE shop_writer",  # an INSERT reads nothing
        "GRANT UPDATE ON TABLE Orders TO ROLE shop_writer",
        # cancel_order waits for approval: its identity reads and writes the approvals table
        "GRANT SELECT(ApprovalId, State, Issuer, Iss, Subject, Actors, Route, Query, RequestHash, "
        "Params, Approvers, RequestId, CreatedAt, ExpiresAt, DecidedAt, DeciderIss, "
        "DeciderSubject, Reason, UsedAt, UsedBy, Scope, DeciderActors) ON TABLE SpangateApprovals TO "
        "ROLE shop_writer",
        "GRANT INSERT ON TABLE SpangateApprovals TO ROLE shop_writer",
        "GRANT UPDATE ON TABLE SpangateApprovals TO ROLE shop_writer",
        "GRANT SELECT(KeyHash, RequestHash, Response, CommittedAt, ExpiresAt) ON TABLE "
        "SpangateIdempotency TO ROLE shop_writer",
        "GRANT INSERT ON TABLE SpangateIdempotency TO ROLE shop_writer",
        "GRANT UPDATE ON TABLE SpangateIdempotency TO ROLE shop_writer",
    ]


def test_columns_read_and_tables_written(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path,
        """\
identities:
  narrow: {database_role: narrow}
  updater: {database_role: updater}
  janitor: {database_role: janitor}
  star: {database_role: star}
  nobody: {}
queries:
  one_column:
    identity: narrow
    sql: |
      SELECT o.Status -- TotalCents in a comment is not read
      FROM Orders AS o
      WHERE o.TenantId = @tenant AND o.Currency != 'CustomerId'
    params: {tenant: {type: STRING}}
  join:
    identity: narrow
    sql: |
      SELECT i.Sku FROM OrderItems i JOIN Orders o ON o.OrderId = i.OrderId
      WHERE o.TenantId = @tenant
    params: {tenant: {type: STRING}}
  pay:
    identity: updater
    sql: |
      UPDATE Orders SET Status = 'PAID', TotalCents = TotalCents + @delta
      WHERE TenantId = @tenant AND OrderId = @id THEN RETURN OrderId
    params: {tenant: {type: STRING}, id: {type: STRING}, delta: {type: INT64}}
  purge:
    identity: janitor
    sql: DELETE FROM OrderItems WHERE TenantId = @tenant AND Quantity = 0
    params: {tenant: {type: STRING}}
  everything:
    identity: star
    sql: SELECT * FROM Tenants
  counted:
    identity: nobody
    sql: SELECT COUNT(*) AS n FROM Orders
routes:
  - {path: /a, method: GET, query: one_column, allow: [tester]}
  - {path: /b, method: GET, query: join, allow: [tester]}
  - {path: /c, method: POST, query: pay, allow: [tester]}
  - {path: /d, method: POST, query: purge, allow: [tester]}
  - {path: /e, method: GET, query: everything, allow: [tester]}
  - {path: /f, method: GET, query: counted, allow: [tester]}
""",
    )
    needs = needs_of(policy, SCHEMA)
    assert set(needs) == {"narrow", "updater", "janitor", "star"}  # no role: no grants
    assert needs["narrow"].select == {
        "Orders": {"Status", "TenantId", "Currency", "OrderId"},  # not TotalCents, CustomerId
        "OrderItems": {"Sku", "OrderId"},
    }
    assert needs["narrow"].writes == set()
    updater = needs["updater"]
    # Status is only assigned (no SELECT); TotalCents is read on the right-hand side.
    assert updater.select["Orders"] == {"TotalCents", "TenantId", "OrderId"}
    assert updater.writes >= {("Orders", "UPDATE")}
    janitor = needs["janitor"]
    assert janitor.select["OrderItems"] == {"TenantId", "Quantity"}
    assert ("OrderItems", "DELETE") in janitor.writes
    assert needs["star"].select == {"Tenants": {"TenantId", "Name"}}


def test_check_finds_what_is_missing_and_what_is_extra() -> None:
    policy = load_compiled(REPO / "policy.example.yaml", {})
    needs = needs_of(policy, SCHEMA)
    exact_columns = [
        ("shop_reader", t, c, "SELECT")
        for t, cols in needs["shop_reader"].select.items()
        for c in cols
    ]
    writer_tables = [("shop_writer", t, p) for t, p in needs["shop_writer"].writes]
    writer_columns = [
        ("shop_writer", t, c, "SELECT")
        for t, cols in needs["shop_writer"].select.items()
        for c in cols
    ]
    report = check(
        needs, SCHEMA, roles=["shop_reader", "shop_writer"], table_grants=writer_tables,
        column_grants=exact_columns + writer_columns,
    )  # fmt: skip
    assert report.ok, (report.missing, report.extra)
    drifted = check(
        needs,
        SCHEMA,
        roles=["shop_reader"],
        table_grants=[
            *writer_tables,
            ("shop_reader", "Customers", "SELECT"),  # all its columns are read: not extra
            ("shop_reader", "Tenants", "SELECT"),
            ("shop_writer", "Orders", "DELETE"),
        ],
        column_grants=[g for g in exact_columns if g[2] != "Email"]
        + [("shop_reader", "Orders", "Email", "SELECT")],
    )
    assert "CREATE ROLE shop_writer" in drifted.missing["shop_writer"]
    assert drifted.missing["shop_reader"] == []  # Email is covered by the table-level grant
    assert drifted.extra["shop_reader"] == [
        "SELECT ON TABLE Tenants (covers TenantId, Name)",
        "SELECT(Email) ON TABLE Orders",
    ]
    assert drifted.extra["shop_writer"] == ["DELETE ON TABLE Orders"]
    assert not drifted.ok


def test_catalog_from_ddl_skips_constraints() -> None:
    catalog = catalog_from_ddl(
        [
            "CREATE TABLE IF NOT EXISTS A (Id INT64 NOT NULL, B STRING(MAX),"
            " CONSTRAINT FK FOREIGN KEY (B) REFERENCES C (B), CHECK (Id > 0)) PRIMARY KEY (Id)",
            "CREATE INDEX X ON A (B)",
        ]
    )
    assert catalog == Catalog({"A": ("Id", "B")})


def test_every_generated_statement_parses_on_the_emulator(demo_database: str) -> None:
    """The emulator parses fine-grained access control without enforcing it: a valid CREATE ROLE
    or table GRANT draws 500 "Unsupported ddl statement", a valid column-level GRANT draws 400
    "Emulator does not yet support column level access control", and a malformed one draws 400
    "Syntax error" (the control below)."""
    policy = load_compiled(REPO / "policy.example.yaml", {})
    statements = ddl(needs_of(policy, SCHEMA), SCHEMA)
    database = emulator_client(demo_database, project=PROJECT).instance(INSTANCE).database("shop")

    def outcome(statement: str) -> str:
        try:
            database.update_ddl([statement]).result(timeout=30)
        except (gexc.InternalServerError, gexc.InvalidArgument) as exc:
            return str(exc.message)
        return "accepted"

    for statement in statements:
        said = outcome(statement)
        assert (
            "Unsupported ddl statement" in said
            or "Emulator does not yet support column level access control" in said
        ), (statement, said)
    assert "Syntax error" in outcome("GRANT SELEC(OrderId) ON TABLE Orders TO ROLE shop_reader")
    assert "Syntax error" in outcome("GRANT SELECT ON Orders TO shop_reader")


def test_grants_cli_from_a_schema_file_and_from_the_database(
    demo_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = str(REPO / "policy.example.yaml")
    assert main(["grants", "--policy", example, "--schema", str(REPO / "dev" / "schema.sql")]) == 0
    offline = capsys.readouterr().out
    assert "CREATE ROLE shop_reader;" in offline and "GRANT INSERT ON TABLE Orders" in offline
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", demo_database)
    assert main(["grants", "--policy", example]) == 0  # the schema read from the database
    live = capsys.readouterr().out
    assert [line for line in live.splitlines() if not line.startswith("--")] == [
        line for line in offline.splitlines() if not line.startswith("--")
    ]
    assert main(["grants", "--policy", example, "--check"]) == 2  # no FGAC on the emulator
    assert "needs a real Spanner database" in capsys.readouterr().err


def test_init_db_creates_the_gateways_tables_once(
    demo_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ddl_, _ = load_demo_sql(REPO)
    make_database(demo_database, "sginit", ddl_)
    path = tmp_path / "policy.yaml"
    path.write_text(
        (REPO / "policy.example.yaml").read_text().replace("database: shop", "database: sginit")
    )
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", demo_database)
    assert main(["init-db", "--policy", str(path), "--print"]) == 0
    printed = capsys.readouterr().out
    assert "CREATE TABLE IF NOT EXISTS SpangateIdempotency" in printed
    assert split_statements(printed, "googlesql")  # what it prints is runnable DDL
    assert main(["init-db", "--policy", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SpangateIdempotency: created" in out and "SpangateApprovals: created" in out
    added = "ALTER TABLE SpangateApprovals ADD COLUMN IF NOT EXISTS Scope STRING(64): applied"
    assert added in out
    assert main(["init-db", "--policy", str(path)]) == 0  # again: nothing to do
    out = capsys.readouterr().out
    assert "SpangateIdempotency: exists" in out and "SpangateApprovals: exists" in out
    assert added in out  # a table of an older version gains its columns; a no-op here
    assert "CREATE INDEX IF NOT EXISTS SpangateApprovalsByScope" in out
    tables = query_rows(
        demo_database, "sginit",
        "SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'SpangateIdempotency'",
    )  # fmt: skip
    assert tables == [["SpangateIdempotency"]]
