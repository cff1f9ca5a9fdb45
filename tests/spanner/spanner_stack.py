"""Helpers for the Spanner tests: a database of one's own, a policy, and the real gateway on them.

Databases are created on the session's emulator (``demo-project/demo``) under names of their own;
tests that need a special emulator (``--log_requests``, fault injection, a restart) start one on a
free port and stop it by PID.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from gateway.app import Gateway
from gateway.dev.database import create_database, emulator_client
from gateway.runtime import build_gateway
from gateway.settings import Settings

PROJECT, INSTANCE = "demo-project", "demo"
AUDIT_KEY = "spanner-stack-test-key"  # policies that redact need one (the gateway refuses otherwise)

Token = Callable[..., str]

HEADER = """\
version: 1
spanner: {{project: {project}, instance: {instance}, database: {database}}}
issuers:
  okta: {{issuer: "${{OKTA_ISSUER}}", audience: "api://shop", preset: okta}}
roles:
  tester:
    - groups: [support]
  writer:
    - scopes: [orders.write]
"""


def policy_text(database: str, body: str, *, project: str = PROJECT) -> str:
    """A policy on ``database``: the okta issuer, roles ``tester`` (group support) and
    ``writer`` (scope orders.write), plus ``body`` (identities, queries, routes...)."""
    head = HEADER.format(project=project, instance=INSTANCE, database=database)
    return head + textwrap.dedent(body)


def make_database(
    host: str,
    name: str,
    ddl: Sequence[str],
    dml: Sequence[str] = (),
    *,
    project: str = PROJECT,
    dialect: str = "googlesql",
) -> None:
    create_database(
        host, project=project, instance=INSTANCE, database=name, ddl=ddl, dml=dml, dialect=dialect
    )


def query_rows(host: str, database: str, sql: str, *, project: str = PROJECT) -> list[list[Any]]:
    """Rows of ``sql`` read straight from the emulator (not through the gateway)."""
    client = emulator_client(host, project=project)
    db = client.instance(INSTANCE).database(database)
    session = db.session()
    session.create()
    try:
        return [list(r) for r in session.snapshot().execute_sql(sql)]
    finally:
        with contextlib.suppress(Exception):
            session.delete()
        db.spanner_api.transport.close()


def apply_ddl(
    host: str, database: str, statements: Sequence[str], *, project: str = PROJECT
) -> None:
    client = emulator_client(host, project=project)
    db = client.instance(INSTANCE).database(database)
    db.update_ddl(list(statements)).result(timeout=60)


@contextlib.asynccontextmanager
async def gateway_on(
    tmp_path: Path,
    host: str,
    policy: str,
    *,
    issuer: str,
    audit_path: Path | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """The real gateway (started: keys fetched, identities warmed, statements analysed) on
    ``policy`` and the emulator at ``host``, with an httpx client over ASGI."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    config = Settings(
        policy=path,
        spanner_emulator_host=host,
        audit_path=audit_path or tmp_path / "audit.jsonl",
        jwks_min_refetch_seconds=1.0,
        **{"audit_key": AUDIT_KEY, **settings},
    )
    app = build_gateway(config, env={"OKTA_ISSUER": issuer})
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield app, http
    finally:
        await app.shutdown()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
