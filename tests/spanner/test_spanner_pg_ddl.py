"""The database side of a PostgreSQL-dialect policy: `spangate grants` in the dialect's syntax,
and `init-db`'s tables (Idempotency-Key, approvals, audit) in the dialect (applied on the real
emulator)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.spanner_v1 import COMMIT_TIMESTAMP
from spanner_stack import INSTANCE, PROJECT, apply_ddl, make_database, query_rows

from gateway.approvals.record import ApprovalRecord
from gateway.audit.spanner_sink import COLUMNS, audit_table_ddl
from gateway.cli import main
from gateway.dev.database import emulator_client, split_statements
from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy
from gateway.spanner import approvals, grants, idempotency
from gateway.spanner.ddl import shipped_ddl

REPO = Path(__file__).resolve().parents[2]
ENV = {"OKTA_ISSUER": "http://127.0.0.1:1/x"}


def _policy() -> grants.CompiledPolicy:
    return compile_policy(load_policy(REPO / "policy.example.postgresql.yaml", env=ENV))


def _catalog() -> grants.Catalog:
    text = (REPO / "dev" / "schema-postgresql.sql").read_text()
    return grants.catalog_from_ddl(split_statements(text, "postgresql"), "postgresql")


def test_grants_are_written_in_the_postgresql_dialect() -> None:
    catalog = _catalog()
    statements = grants.ddl(grants.needs_of(_policy(), catalog), catalog, "postgresql")
    assert statements == [
        'CREATE ROLE "shop_reader"',
        'GRANT SELECT("tenant_id", "customer_id", "name", "email", "created_at") ON TABLE '
        '"customers" TO "shop_reader"',
        'GRANT SELECT("tenant_id", "order_id", "customer_id", "status", "total_cents", '
        '"currency", "created_at") ON TABLE "orders" TO "shop_reader"',
        'GRANT SELECT("tenant_id", "order_id", "item_id", "sku", "quantity", '
        '"unit_price_cents") ON TABLE "order_items" TO "shop_reader"',
        'CREATE ROLE "shop_writer"',
        'GRANT SELECT("tenant_id", "order_id", "status") ON TABLE "orders" TO "shop_writer"',
        'GRANT INSERT ON TABLE "orders" TO "shop_writer"',
        'GRANT UPDATE ON TABLE "orders" TO "shop_writer"',
        # cancel_order waits for approval: its identity reads and writes the approvals table
        'GRANT SELECT("ApprovalId", "State", "Issuer", "Iss", "Subject", "Actors", "Route", '
        '"Query", "RequestHash", "Params", "Approvers", "RequestId", "CreatedAt", "ExpiresAt", '
        '"DecidedAt", "DeciderIss", "DeciderSubject", "Reason", "UsedAt", "UsedBy", "Scope", '
        '"DeciderActors") ON TABLE "SpangateApprovals" TO "shop_writer"',
        'GRANT INSERT ON TABLE "SpangateApprovals" TO "shop_writer"',
        'GRANT UPDATE ON TABLE "SpangateApprovals" TO "shop_writer"',
        'GRANT SELECT("KeyHash", "RequestHash", "Response", "CommittedAt", "ExpiresAt") ON '
        'TABLE "SpangateIdempotency" TO "shop_writer"',
        'GRANT INSERT ON TABLE "SpangateIdempotency" TO "shop_writer"',
        'GRANT UPDATE ON TABLE "SpangateIdempotency" TO "shop_writer"',
    ]


def test_postgresql_grants_quote_reserved_words() -> None:
    """A table ``select`` with a column ``user``: unquoted, PostgreSQL would not parse the GRANT."""
    catalog = grants.catalog_from_ddl(
        ['CREATE TABLE "select" (id int8 PRIMARY KEY, "user" varchar)'], "postgresql"
    )
    needs = {"reader": grants.Needs("reader", select={"select": {"id", "user"}})}
    assert grants.ddl(needs, catalog, "postgresql") == [
        'CREATE ROLE "reader"',
        'GRANT SELECT("id", "user") ON TABLE "select" TO "reader"',
    ]


def test_a_postgresql_schema_folds_unquoted_names_and_keeps_quoted_ones() -> None:
    catalog = grants.catalog_from_ddl(
        ['CREATE TABLE Orders (OrderId varchar NOT NULL, "Total" int8, PRIMARY KEY (OrderId))',
         'CREATE TABLE "Mixed" (a int8 PRIMARY KEY)'],
        "postgresql",
    )  # fmt: skip
    assert catalog.tables == {"orders": ("orderid", "Total"), "Mixed": ("a",)}


def test_init_db_creates_the_gateways_tables_in_the_dialect(demo_database: str) -> None:
    statements = [*shipped_ddl(_policy()), audit_table_ddl("SpangateAudit", "postgresql")]
    assert statements[:2] == [idempotency.PG_DDL[0], approvals.PG_DDL[0]]
    make_database(demo_database, "pgddl", statements, dialect="postgresql")
    tables = query_rows(
        demo_database,
        "pgddl",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "ORDER BY table_name",
    )
    assert tables == [["SpangateApprovals"], ["SpangateAudit"], ["SpangateIdempotency"]]
    # its row deletion policy, as the emulator keeps it
    kept = query_rows(
        demo_database,
        "pgddl",
        "SELECT row_deletion_policy_expression FROM information_schema.tables "
        "WHERE table_name = 'SpangateApprovals'",
    )
    assert kept == [["INTERVAL '7 DAYS' ON \"ExpiresAt\""]], kept
    # The audit sink, the Idempotency-Key record and the approvals write by mutations, naming
    # them as in GoogleSQL (the quoted names keep their case), with a commit timestamp.
    client = emulator_client(demo_database, project=PROJECT)
    session = client.instance(INSTANCE).database("pgddl").session()
    session.create()
    row = ["i" * 32, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), COMMIT_TIMESTAMP, "r", None, None,
           True, 200, "ok", None, None, None, "h" * 64, "{}"]  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    record = ["k" * 64, "q" * 64, "{}", COMMIT_TIMESTAMP, now + dt.timedelta(days=1)]

    def write(transaction: Any) -> None:
        transaction.insert("SpangateAudit", COLUMNS, [row])
        transaction.insert(
            idempotency.TABLE, ("KeyHash", "RequestHash", "Response", "CommittedAt", "ExpiresAt"),
            [record],
        )  # fmt: skip

    session.run_in_transaction(write)
    request = ApprovalRecord(
        approval_id="a" * 32, state="pending", issuer="okta", iss="https://idp", subject="s",
        actors=("agent",), route="POST /v1/orders/{order_id}/cancel", query="cancel_order",
        request_hash="h" * 64, params={"order_id": "O-1", "tenant": "t1"},
        approvers=("support-leads",), request_id="r", created_at=now,
        expires_at=now + dt.timedelta(minutes=15), scope="s" * 64,
    )  # fmt: skip
    session.run_in_transaction(lambda transaction: approvals.insert(transaction, request))
    with contextlib.suppress(Exception):
        session.delete()
    counts = query_rows(
        demo_database,
        "pgddl",
        'SELECT (SELECT count(*) FROM "SpangateAudit"), (SELECT count(*) FROM "SpangateIdempotency"),'
        ' (SELECT count(*) FROM "SpangateApprovals")',
    )
    assert counts == [[1, 1, 1]]


def test_the_emulator_refuses_postgresql_roles_as_it_refuses_googlesql_ones(
    demo_database: str,
) -> None:
    make_database(demo_database, "pgroles", ["CREATE TABLE t (k int8 PRIMARY KEY)"], dialect="postgresql")
    with pytest.raises(gexc.FailedPrecondition, match="Statement is not supported"):
        apply_ddl(demo_database, "pgroles", ["CREATE ROLE shop_reader"])


def test_the_init_db_and_grants_commands_on_a_postgresql_database(
    demo_database: str, tmp_path: Path
) -> None:
    ddl = split_statements((REPO / "dev" / "schema-postgresql.sql").read_text(), "postgresql")
    make_database(demo_database, "pginit", ddl, dialect="postgresql")
    env = {
        **os.environ,
        **ENV,
        "SPANNER_EMULATOR_HOST": demo_database,
        "SPANGATE_SPANNER_DATABASE": "pginit",
    }
    policy = str(REPO / "policy.example.postgresql.yaml")
    run = [sys.executable, "-m", "gateway", "init-db", "--policy", policy]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "SpangateIdempotency: created" in first.stdout
    assert "SpangateApprovals: created" in first.stdout
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "SpangateIdempotency: exists" in again.stdout
    assert "SpangateApprovals: exists" in again.stdout
    # nothing else runs again but the list's index, a no-op once there (no ALTER TABLE in PG)
    applied = [line for line in again.stdout.splitlines() if line.endswith(": applied")]
    assert applied == [
        'CREATE INDEX IF NOT EXISTS "SpangateApprovalsByScope" ON "SpangateApprovals" '
        '("Scope", "State", "CreatedAt"): applied'
    ], again.stdout
    # grants from the live schema (information_schema's 'public' tables) in the dialect
    run = [sys.executable, "-m", "gateway", "grants", "--policy", policy]
    printed = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert 'GRANT INSERT ON TABLE "orders" TO "shop_writer";' in printed.stdout
    assert 'ON TABLE "SpangateIdempotency" TO "shop_writer";' in printed.stdout
    assert 'GRANT UPDATE ON TABLE "SpangateApprovals" TO "shop_writer";' in printed.stdout
    assert '"Scope", "DeciderActors") ON TABLE "SpangateApprovals" TO "shop_writer";' in (
        printed.stdout
    )
    # --check: the emulator answers NotFound for information_schema.enabled_roles (GoogleSQL's
    # INFORMATION_SCHEMA.ROLES: InvalidArgument); both are "no fine-grained access control"
    checked = subprocess.run([*run, "--check"], env=env, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2, (checked.stdout, checked.stderr)
    assert "--check needs a real Spanner database" in checked.stderr


def test_the_check_compares_postgresql_names_exactly() -> None:
    """``"Orders"`` and ``orders`` are two tables in PostgreSQL: a grant on one is not the
    other's (GoogleSQL's names compare case-insensitively)."""
    catalog = grants.Catalog({"orders": ("id",), "Orders": ("id",), "SpangateIdempotency": ()})
    needs = {"r": grants.Needs("r", select={"orders": {"id"}})}
    report = grants.check(
        needs, catalog, roles=["r"], table_grants=[],
        column_grants=[("r", "Orders", "id", "SELECT")], dialect="postgresql",
    )  # fmt: skip
    assert report.missing["r"] == ["SELECT(id) ON TABLE orders"]
    assert report.extra["r"] == ["SELECT(id) ON TABLE Orders"]
    assert not grants.check(
        needs, catalog, roles=["R"], table_grants=[], column_grants=[("r", "orders", "id", "SELECT")],
        dialect="postgresql",
    ).ok  # role "R" is not role "r"


def test_a_postgresql_schema_keeps_quoted_names_with_spaces_and_schema_qualified_tables() -> None:
    catalog = grants.catalog_from_ddl(
        [
            'CREATE TABLE "My Table" (id int8 PRIMARY KEY, "first name" varchar, Last varchar)',
            'CREATE TABLE public."T2" ("a, b" int8, c text DEFAULT \'x, y\', PRIMARY KEY ("a, b"))',
            "CREATE TABLE IF NOT EXISTS s.plain (k int8 NOT NULL, v numeric(10, 2), "
            "CONSTRAINT ck CHECK (k > 0), UNIQUE (v), PRIMARY KEY (k))",
            "CREATE INDEX ix ON plain (v)",
        ],
        "postgresql",
    )
    assert catalog.tables == {
        "My Table": ("id", "first name", "last"),
        "T2": ("a, b", "c"),
        "plain": ("k", "v"),
    }


def test_a_postgresql_schema_the_reader_cannot_follow_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="unterminated quoted identifier"):
        grants.catalog_from_ddl(['CREATE TABLE "t (a int8 PRIMARY KEY)'], "postgresql")
    schema = tmp_path / "schema.sql"
    schema.write_text('CREATE TABLE U&"d\\0061t" (a int8 PRIMARY KEY);\n')
    policy = str(REPO / "policy.example.postgresql.yaml")
    assert main(["grants", "--policy", policy, "--schema", str(schema)]) == 2
    err = capsys.readouterr().err
    assert "cannot read the schema: cannot read 'CREATE TABLE U&" in err
    assert "U& strings and identifiers (Unicode escapes) are not read" in err
