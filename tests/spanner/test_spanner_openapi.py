"""OpenAPI from the policy: typed parameters (claim-bound ones hidden), response columns typed by
Spanner's PLAN, the Idempotency-Key header and problem responses of writes; it follows reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from spanner_stack import gateway_on

REPO = Path(__file__).resolve().parents[2]


def _ok_schema(operation: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return schema


async def test_the_document_types_rows_from_the_plan(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    get_order = doc["paths"]["/v1/orders/{order_id}"]["get"]
    assert [p["name"] for p in get_order["parameters"]] == ["order_id"]  # tenant: from the token
    order_id = get_order["parameters"][0]["schema"]
    assert order_id["type"] == "string" and order_id["maxLength"] == 36
    assert order_id["pattern"].startswith("^(?!")  # one path segment: what the router accepts
    ok = _ok_schema(get_order)
    assert ok["required"] == ["rows", "row_count", "truncated"]
    row = ok["properties"]["rows"]["items"]
    assert ok["properties"]["rows"]["maxItems"] == 1  # the query's max_rows
    assert row["required"] == [
        "OrderId",
        "CustomerId",
        "Status",
        "TotalCents",
        "Currency",
        "CreatedAt",
    ]
    assert row["properties"]["TotalCents"] == {"type": ["integer", "null"], "format": "int64"}
    assert row["properties"]["CreatedAt"] == {"type": ["string", "null"], "format": "date-time"}
    assert row["additionalProperties"] is False
    assert set(get_order["responses"]) == {"200", "400", "401", "403", "404", "500", "503", "504"}
    listing = doc["paths"]["/v1/orders"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": 100,
        "default": 20,
    }
    status = next(p for p in listing["parameters"] if p["name"] == "status")
    assert status["required"] is False and status["schema"]["enum"] == [
        "OPEN",
        "PAID",
        "SHIPPED",
        "CANCELLED",
    ]


async def test_writes_document_their_key_and_their_errors(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    create = doc["paths"]["/v1/orders"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in create["parameters"]
    header = doc["components"]["parameters"]["IdempotencyKey"]
    assert header["in"] == "header" and header["name"] == "Idempotency-Key"
    assert {"409", "413", "415", "422", "504"} <= set(create["responses"])
    ok = _ok_schema(create)
    assert ok["required"] == ["row_count", "commit_timestamp"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert "tenant" not in body["properties"] and body["additionalProperties"] is False
    assert body["properties"]["total_cents"]["oneOf"][0] == {
        "type": "integer",
        "format": "int64",
        "minimum": 0,
    }
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert create["security"] == [{"bearer": []}]


async def test_a_response_matches_its_documented_columns(
    client: httpx.AsyncClient, token_for: Any
) -> None:
    doc = (await client.get("/openapi.json")).json()
    row_schema = _ok_schema(doc["paths"]["/v1/orders/{order_id}/items"]["get"])["properties"][
        "rows"
    ]["items"]
    token = token_for("support-console")
    response = await client.get(
        "/v1/orders/O-1001/items", headers={"Authorization": f"Bearer {token}"}
    )
    rows = response.json()["rows"]
    assert rows
    python_types = {"string": str, "integer": int}
    for row in rows:
        assert list(row) == row_schema["required"]
        for name, value in row.items():
            declared = row_schema["properties"][name]["type"][0]
            assert isinstance(value, python_types[declared]), (name, value)


async def test_the_document_follows_a_reload(demo_database: str, idp: Any, tmp_path: Path) -> None:
    text = (REPO / "policy.example.yaml").read_text()
    async with gateway_on(tmp_path, demo_database, text, issuer=idp.issuer) as (app, http):
        before = (await http.get("/openapi.json")).json()
        assert "/v1/tenant" not in before["paths"]
        extra = text.replace(
            "routes:\n",
            "  tenant_name:\n"
            "    identity: shop_reader\n"
            "    sql: SELECT Name, LENGTH(Name) AS NameLength FROM Tenants WHERE TenantId = @tenant\n"
            "    params:\n"
            "      tenant: {type: STRING, from: claim.tenant}\n"
            "routes:\n"
            "  - {path: /v1/tenant, method: GET, query: tenant_name, allow: [support]}\n",
        )
        (tmp_path / "policy.yaml").write_text(extra)
        assert await app.reloader.reload() is True
        after = (await http.get("/openapi.json")).json()
        assert after["info"]["x-policy-sha256"] != before["info"]["x-policy-sha256"]
        row = _ok_schema(after["paths"]["/v1/tenant"]["get"])["properties"]["rows"]["items"]
        assert row["properties"] == {
            "Name": {"type": ["string", "null"]},
            "NameLength": {"type": ["integer", "null"], "format": "int64"},
        }
        assert "parameters" not in after["paths"]["/v1/tenant"]["get"]


async def test_docs_serves_swagger_ui_from_the_package(client: httpx.AsyncClient) -> None:
    """/docs names no outside origin: its script, style and icon come from the gateway itself,
    under a Content-Security-Policy that forbids any other origin."""
    page = await client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "http://" not in html and "https://" not in html, "an asset from another origin"
    for asset, kind in (
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/favicon.png", "image/png"),
    ):
        assert asset in html
        answer = await client.get(asset)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
        assert len(answer.content) > 1000
    assert "SwaggerUIBundle" in (await client.get("/docs/swagger-ui-bundle.js")).text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self' 'unsafe-inline'" in csp
    # Only the named assets are served: any other name under /docs is a policy path, where the
    # token is checked first (401), and no route could exist (the loader reserves /docs).
    assert (await client.get("/docs/swagger-ui.js")).status_code == 401
    assert (await client.get("/docs/%2E%2E/pyproject.toml")).status_code in (400, 401)
