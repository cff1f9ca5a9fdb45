"""What the hot-reload tests share: a policy change that adds a route, and a gateway built in
process on a policy file (with the session's emulator and OpenID provider)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.runtime import build_gateway
from gateway.settings import Settings

__all__ = ["NEW_ROUTE", "NEW_ROUTE_ENTRY", "gateway_on", "with_new_route"]

NEW_ROUTE = """
  tenant_name:
    identity: shop_reader
    sql: SELECT Name FROM Tenants WHERE TenantId = @tenant
    params:
      tenant: {type: STRING, from: claim.tenant}
"""
NEW_ROUTE_ENTRY = """  - path: /v1/tenant
    method: GET
    query: tenant_name
    allow: [support]
"""


def with_new_route(text: str) -> str:
    """``text`` (a policy with ``queries:`` and ``routes:`` at the top level) with the query
    ``tenant_name`` and its route ``GET /v1/tenant`` (for ``support``) added."""
    text = text.replace("\nqueries:\n", "\nqueries:" + NEW_ROUTE, 1)
    text = text.replace("\nroutes:\n", "\nroutes:\n" + NEW_ROUTE_ENTRY, 1)
    assert text.count("tenant_name") == 2, "the policy has no top-level queries: or routes:"
    return text


@asynccontextmanager
async def gateway_on(
    policy: Path, *, database: str, idp: Any, tmp_path: Path, audit_key: str, **settings: Any
) -> AsyncIterator[Gateway]:
    """The gateway as ``spangate serve`` builds it, started on ``policy`` and shut down after."""
    app = build_gateway(
        Settings(
            policy=policy,
            spanner_emulator_host=database,
            audit_path=tmp_path / "audit.jsonl",
            audit_key=audit_key,
            **settings,
        ),
        env={"OKTA_ISSUER": idp.issuer},
    )
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()
