"""The one statement every target runs, and who runs it: shared by the suite and its drivers.

The statement, its parameters' types and the database role are read from ``policy.example.yaml``
(the query ``get_order`` and its identity), so the raw clients and the hand-written service run
exactly the text the gateway runs. The four callers are personas of ``dev/idp/clients.json`` that
the route allows; the raw drivers use their tenants in the same rotation as the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "DATABASE",
    "INSTANCE",
    "ORDER_ID",
    "PATH",
    "PERSONAS",
    "PROJECT",
    "REPO",
    "ROWS",
    "Statement",
    "extra_orders",
    "spanner_param_types",
    "statement",
]

REPO = Path(__file__).resolve().parents[2]
PROJECT, INSTANCE, DATABASE = "demo-project", "demo", "shop"
QUERY = "get_order"
ORDER_ID = "O-1001"  # in both tenants (dev/seed.sql)
PATH = f"/v1/orders/{ORDER_ID}"
# Allowed on the route: two people of tenant t1 (RS256), the read-only agent (ES256, scope
# orders.read) and a person of tenant t2. Four tokens, rotated request by request.
PERSONAS = ("support-console", "support-lead", "order-agent", "support-t2")
COLUMNS = ("OrderId", "CustomerId", "Status", "TotalCents", "Currency", "CreatedAt")
ROWS = 100  # the Orders table holds this many rows (the seed's 7, and extra_orders())


@dataclass(frozen=True)
class Statement:
    sql: str
    param_types: dict[str, str]  # parameter -> Spanner type name (STRING, INT64, ...)
    database_role: str


@cache
def statement(policy: Path = REPO / "policy.example.yaml") -> Statement:
    """The example policy's ``get_order``: its SQL text, parameter types and database role."""
    import yaml

    doc: dict[str, Any] = yaml.safe_load(policy.read_text(encoding="utf-8"))
    query = doc["queries"][QUERY]
    role = doc["identities"][query["identity"]]["database_role"]
    types = {name: spec["type"] for name, spec in query["params"].items()}
    return Statement(sql=query["sql"], param_types=types, database_role=role)


def extra_orders() -> list[str]:
    """DML adding orders to tenant t1 until the Orders table has ``ROWS`` rows (the emulator
    scans the whole table for SQL, so its size matters: field notes)."""
    seeded = 7  # dev/seed.sql: 4 orders of t1, 3 of t2
    values = ", ".join(
        f"('t1', 'O-{2000 + n}', 'C-1', 'OPEN', {100 + n}, 'USD', TIMESTAMP '2026-02-01T00:00:00Z')"
        for n in range(ROWS - seeded)
    )
    columns = "TenantId, OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt"
    return [f"INSERT INTO Orders ({columns}) VALUES {values}"]  # noqa: S608 - constants only


def spanner_param_types(names: dict[str, str]) -> dict[str, Any]:
    """``{"tenant": "STRING"}`` as the client's ``param_types`` (always pass them: without them
    the emulator takes a parameter as INT64)."""
    from google.cloud.spanner_v1 import param_types

    return {name: getattr(param_types, kind) for name, kind in names.items()}
