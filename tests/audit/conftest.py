"""Fixtures of the audit tests: a gateway on the audit policy (tests/audit/data/policy.yaml)
with its own audit file, against the session's emulator and OpenID provider."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.audit.spanner_sink import audit_table_ddl
from gateway.dev.database import create_database, emulator_client, load_demo_sql
from gateway.runtime import build_gateway
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
POLICY = Path(__file__).parent / "data" / "policy.yaml"
PEER = ("203.0.113.9", 40000)
PROJECT, INSTANCE, DATABASE = "demo-project", "demo", "audit"
SCRATCH = (
    "CREATE TABLE Scratch (TenantId STRING(36) NOT NULL, Note STRING(MAX)) PRIMARY KEY (TenantId)"
)


def audit_schema() -> tuple[list[str], list[str]]:
    ddl, dml = load_demo_sql(REPO)
    return [*ddl, audit_table_ddl("SpangateAudit"), SCRATCH], dml


def update_ddl(host: str, statements: list[str], database: str = DATABASE) -> None:
    client = emulator_client(host, project=PROJECT)
    try:
        db = client.instance(INSTANCE).database(database)  # type: ignore[no-untyped-call]
        db.update_ddl(statements).result(timeout=60)
    finally:
        for attr in ("_instance_admin_api", "_database_admin_api"):
            api = getattr(client, attr, None)
            if api is not None:
                api.transport.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def request_id(event: dict[str, Any]) -> str:
    value: str = event["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
    return value


@pytest.fixture(scope="session")
def audit_database(demo_database: str) -> str:
    """The demo schema and seed, the audit table and Scratch, as demo-project/demo/audit."""
    ddl, dml = audit_schema()
    create_database(demo_database, project=PROJECT, instance=INSTANCE, database=DATABASE,
                    ddl=ddl, dml=dml)  # fmt: skip
    return demo_database


@pytest.fixture
def scratch(audit_database: str) -> str:
    """The Scratch table exists when the test starts (a test may drop it); returns the host."""
    try:
        update_ddl(audit_database, [SCRATCH])
    except Exception as exc:  # noqa: BLE001 - it is already there
        assert "Duplicate name" in str(exc) or "already exists" in str(exc), exc
    return audit_database


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def make_settings(scratch: str, audit_file: Path, audit_key: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "policy": POLICY,
            "spanner_emulator_host": scratch,
            "audit_path": audit_file,
            "audit_key": audit_key,
            "jwks_min_refetch_seconds": 1.0,
            "max_body_bytes": 4096,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def serve(idp: Any) -> Callable[[Settings], Any]:
    """``async with serve(settings) as (gateway, http)``: started, and shut down afterwards."""

    @asynccontextmanager
    async def running(settings: Settings) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
        app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app, client=PEER)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
                yield app, http
        finally:
            await app.shutdown()

    return running
