"""End to end through the app: real tokens from the provider, real statements on the emulator."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

Token = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def signing_key(keys_path: Path, kty: str) -> tuple[str, Any]:
    """The provider's own private key (the test owns the key file it started the provider with)."""
    for jwk in json.loads(keys_path.read_text())["keys"]:
        if jwk["kty"] == kty:
            return jwk["kid"], jwt.PyJWK(jwk).key
    raise AssertionError(f"no {kty} key")


def mint(
    keys_path: Path, claims: dict[str, Any], *, kty: str = "RSA", alg: str = "RS256", **header: Any
) -> str:
    kid, key = signing_key(keys_path, kty)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, **header})


def claims_for(issuer: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": issuer,
        "aud": "api://shop",
        "sub": "minted",
        "iat": now,
        "exp": now + 300,
        "groups": ["support"],
        "tenant": "t1",
    }
    return {**base, **extra}


# -- personas ------------------------------------------------------------------------------------


async def test_support_reads_an_order_of_its_tenant(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    response = await client.get("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["row_count"] == 1 and body["truncated"] is False
    row = body["rows"][0]
    assert row["OrderId"] == "O-1001"
    assert row["TotalCents"] == 7499  # t1's O-1001; t2's costs 126400
    assert row["CreatedAt"].endswith("Z")


async def test_agent_with_es256_token_reads_orders_but_not_customers(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    token = token_for("order-agent")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    response = await client.get("/v1/orders/O-1001/items", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["row_count"] >= 1
    denied = await client.get("/v1/customers/C-1", headers=bearer(token))
    assert_problem(denied, 403, "no-allow-role")


async def test_agent_without_the_scope_is_denied(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    token = token_for("order-agent", scope="")
    response = await client.get("/v1/orders/O-1001", headers=bearer(token))
    assert_problem(response, 403, "no-allow-role")


async def test_list_with_filters_and_limit(client: httpx.AsyncClient, token_for: Token) -> None:
    headers = bearer(token_for("support-console"))
    everything = (await client.get("/v1/orders", headers=headers)).json()
    assert everything["row_count"] >= 4
    assert {r["OrderId"] for r in everything["rows"]} >= {"O-1001"}
    limited = (await client.get("/v1/orders", params={"limit": "1"}, headers=headers)).json()
    assert limited["row_count"] == 1
    open_only = (
        await client.get("/v1/orders", params={"status": "SHIPPED"}, headers=headers)
    ).json()
    assert open_only["rows"] and all(r["Status"] == "SHIPPED" for r in open_only["rows"])
    big = (
        await client.get("/v1/orders", params={"min_total_cents": "7000"}, headers=headers)
    ).json()
    assert all(r["TotalCents"] >= 7000 for r in big["rows"])


async def test_service_writes_an_order_and_support_reads_it(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    order_id = f"O-{time.time_ns() % 10**12}"
    response = await client.post(
        "/v1/orders",
        json={"order_id": order_id, "customer_id": "C-1", "total_cents": 1234},
        headers=bearer(token_for("order-writer")),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["row_count"] == 1
    assert body["commit_timestamp"].endswith("Z")
    read = await client.get(f"/v1/orders/{order_id}", headers=bearer(token_for("support-console")))
    assert read.json()["rows"][0]["TotalCents"] == 1234
    assert read.json()["rows"][0]["Currency"] == "USD"  # the declared default


async def test_writer_cannot_read_and_readers_cannot_write(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    assert_problem(
        await client.get("/v1/orders/O-1001", headers=bearer(token_for("order-writer"))),
        403,
        "no-allow-role",
    )
    response = await client.post(
        "/v1/orders",
        json={"order_id": "O-9", "customer_id": "C-1", "total_cents": 1},
        headers=bearer(token_for("order-agent")),
    )
    assert_problem(response, 403, "no-allow-role")


@pytest.mark.parametrize("path", ["/v1/orders/O-1001", "/v1/orders", "/v1/customers/C-1"])
async def test_outsider_is_denied_everywhere(
    client: httpx.AsyncClient, token_for: Token, path: str
) -> None:
    assert_problem(
        await client.get(path, headers=bearer(token_for("outsider"))), 403, "no-allow-role"
    )


async def test_deny_role_wins_over_allow(client: httpx.AsyncClient, token_for: Token) -> None:
    response = await client.get("/v1/orders/O-1001", headers=bearer(token_for("suspended-support")))
    assert_problem(response, 403, "denied-by-role")


# -- tenancy: the claim-bound tenant can never be chosen by the caller ---------------------------


async def test_caller_cannot_override_the_tenant_in_the_query(
    client: httpx.AsyncClient, token_for: Token, audit_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    response = await client.get(
        "/v1/orders/O-1001", params={"tenant": "t2"}, headers=bearer(token_for("support-console"))
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"][0]["TotalCents"] == 7499  # t1's row, never t2's
    event = next(
        e
        for e in reversed(audit_lines())
        if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
        == response.headers["x-request-id"]
    )
    assert event["protoPayload"]["request"]["params"]["tenant"] == {"value": "t1", "from": "claim"}
    assert event["protoPayload"]["request"]["ignoredCallerValues"] == {"tenant": "t2"}


async def test_caller_cannot_override_the_tenant_in_a_body(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    order_id = f"O-{time.time_ns() % 10**12}"
    response = await client.post(
        "/v1/orders",
        json={"order_id": order_id, "customer_id": "C-1", "total_cents": 5, "tenant": "t2"},
        headers=bearer(token_for("order-writer")),
    )
    assert response.status_code == 200, response.text
    as_t1 = await client.get(f"/v1/orders/{order_id}", headers=bearer(token_for("support-console")))
    assert as_t1.json()["row_count"] == 1
    as_t2 = await client.get(f"/v1/orders/{order_id}", headers=bearer(token_for("support-t2")))
    assert as_t2.json()["row_count"] == 0


async def test_tenants_see_their_own_rows(client: httpx.AsyncClient, token_for: Token) -> None:
    t2 = await client.get("/v1/orders/O-1001", headers=bearer(token_for("support-t2")))
    assert t2.json()["rows"][0]["TotalCents"] == 126400


# -- tokens --------------------------------------------------------------------------------------


async def test_no_token_is_401_without_error_attribute(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/orders/O-1001")
    assert_problem(response, 401, "token-missing")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer realm=") and "error=" not in challenge


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("Bearer not-a-jwt", "token-malformed"),
        ("Bearer a.b.c", "token-malformed"),
        ("Basic dXNlcjpwYXNz", "token-malformed"),
        ("Bearer ", "token-malformed"),
    ],
)
async def test_garbled_tokens_are_401(
    client: httpx.AsyncClient, authorization: str, code: str
) -> None:
    response = await client.get("/v1/orders/O-1001", headers={"Authorization": authorization})
    assert_problem(response, 401, code)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_two_authorization_headers_are_refused(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    token = token_for("support-console")
    response = await client.get(
        "/v1/orders/O-1001",
        headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
    )
    assert_problem(response, 401, "token-malformed")


async def test_token_in_query_string_is_refused(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    response = await client.get(
        "/v1/orders/O-1001", params={"access_token": token_for("support-console")}
    )
    assert_problem(response, 401, "token-malformed")


async def test_expired_token_is_401(client: httpx.AsyncClient, idp_keys: Path, idp: Any) -> None:
    now = int(time.time())
    token = mint(idp_keys, claims_for(idp.issuer, iat=now - 600, exp=now - 120))
    assert_problem(
        await client.get("/v1/orders/O-1001", headers=bearer(token)), 401, "token-expired"
    )


async def test_minted_token_with_the_providers_key_is_accepted(
    client: httpx.AsyncClient, idp_keys: Path, idp: Any
) -> None:
    # The control for the attack cases below: the same construction, valid, passes.
    token = mint(idp_keys, claims_for(idp.issuer))
    assert (await client.get("/v1/orders/O-1001", headers=bearer(token))).status_code == 200


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"aud": "api://other"}, "audience-mismatch"),
        ({"iss": "https://evil.example/oauth2/default"}, "issuer-unknown"),
        ({"nbf": int(time.time()) + 3600}, "token-not-yet-valid"),
        ({"sub": None}, "token-malformed"),
    ],
)
async def test_bad_claims_are_401(
    client: httpx.AsyncClient, idp_keys: Path, idp: Any, change: dict[str, Any], code: str
) -> None:
    claims = {k: v for k, v in {**claims_for(idp.issuer), **change}.items() if v is not None}
    token = mint(idp_keys, claims)
    assert_problem(await client.get("/v1/orders/O-1001", headers=bearer(token)), 401, code)


async def test_tampered_signature_is_401(client: httpx.AsyncClient, token_for: Token) -> None:
    header, payload, signature = token_for("support-console").split(".")
    forged = json.loads(jwt.utils.base64url_decode(payload))
    forged["tenant"] = "t2"
    forged_payload = jwt.utils.base64url_encode(json.dumps(forged).encode()).decode()
    response = await client.get(
        "/v1/orders/O-1001", headers=bearer(f"{header}.{forged_payload}.{signature}")
    )
    assert_problem(response, 401, "signature-invalid")


async def test_alg_none_and_hmac_with_the_public_key_are_refused(
    client: httpx.AsyncClient, idp: Any, idp_keys: Path
) -> None:
    claims = claims_for(idp.issuer)
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert_problem(
        await client.get("/v1/orders/O-1001", headers=bearer(unsigned)),
        401,
        "algorithm-not-allowed",
    )
    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    ).decode()
    body = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    hs = f"{header}.{body}.c2lnbmF0dXJl"
    assert_problem(
        await client.get("/v1/orders/O-1001", headers=bearer(hs)), 401, "algorithm-not-allowed"
    )


async def test_unknown_kid_is_401(client: httpx.AsyncClient, idp: Any, idp_keys: Path) -> None:
    _, key = signing_key(idp_keys, "RSA")
    token = jwt.encode(
        claims_for(idp.issuer), key, algorithm="RS256", headers={"kid": "no-such-kid"}
    )
    assert_problem(await client.get("/v1/orders/O-1001", headers=bearer(token)), 401, "key-unknown")


# -- routing and parameters ----------------------------------------------------------------------


async def test_unknown_path_is_404(client: httpx.AsyncClient, token_for: Token) -> None:
    assert_problem(
        await client.get("/v1/nothing", headers=bearer(token_for("support-console"))),
        404,
        "no-route",
    )
    assert_problem(
        await client.get("/v1/orders/", headers=bearer(token_for("support-console"))),
        404,
        "no-route",
    )


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient, token_for: Token) -> None:
    response = await client.delete(
        "/v1/orders/O-1001", headers=bearer(token_for("support-console"))
    )
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, HEAD"


async def test_head_follows_get(client: httpx.AsyncClient, token_for: Token) -> None:
    response = await client.head("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    assert response.status_code == 200 and response.content == b""


async def test_path_tricks_are_400(client: httpx.AsyncClient, token_for: Token) -> None:
    headers = bearer(token_for("support-console"))
    for path in ("/v1/orders/a%2Fb", "/v1/orders/%2e%2e", "/v1/orders/x%00y"):
        assert_problem(await client.get(path, headers=headers), 400, "path-invalid")


@pytest.mark.parametrize(
    ("path", "params", "param", "code"),
    [
        ("/v1/orders/" + "x" * 37, {}, "order_id", "param-invalid"),
        ("/v1/orders", {"status": "LOST"}, "status", "param-invalid"),
        ("/v1/orders", {"limit": "1000"}, "limit", "param-invalid"),
        ("/v1/orders", {"limit": "ten"}, "limit", "param-invalid"),
        ("/v1/orders", {"colour": "red"}, "colour", "param-unknown"),
        ("/v1/orders", {"limit": ["1", "2"]}, "limit", "param-invalid"),
    ],
)
async def test_bad_parameters_are_400_and_named(
    client: httpx.AsyncClient,
    token_for: Token,
    path: str,
    params: dict[str, Any],
    param: str,
    code: str,
) -> None:
    response = await client.get(path, params=params, headers=bearer(token_for("support-console")))
    body = assert_problem(response, 400, code)
    assert body["param"] == param and param in body["detail"]


async def test_write_parameter_errors(client: httpx.AsyncClient, token_for: Token) -> None:
    headers = bearer(token_for("order-writer"))
    missing = await client.post(
        "/v1/orders", json={"order_id": "O-1", "customer_id": "C-1"}, headers=headers
    )
    assert assert_problem(missing, 400, "param-missing")["param"] == "total_cents"
    pattern = await client.post(
        "/v1/orders",
        json={"order_id": "X-1", "customer_id": "C-1", "total_cents": 1},
        headers=headers,
    )
    assert assert_problem(pattern, 400, "param-invalid")["param"] == "order_id"
    negative = await client.post(
        "/v1/orders",
        json={"order_id": "O-1", "customer_id": "C-1", "total_cents": -1},
        headers=headers,
    )
    assert assert_problem(negative, 400, "param-invalid")["param"] == "total_cents"


async def test_duplicate_insert_is_409(client: httpx.AsyncClient, token_for: Token) -> None:
    headers = bearer(token_for("order-writer"))
    body = {"order_id": "O-1001", "customer_id": "C-1", "total_cents": 1}  # exists in the seed
    assert_problem(await client.post("/v1/orders", json=body, headers=headers), 409, "conflict")


async def test_bodies(client: httpx.AsyncClient, token_for: Token) -> None:
    headers = bearer(token_for("order-writer"))
    too_big = await client.post(
        "/v1/orders",
        content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
        headers={**headers, "content-type": "application/json"},
    )
    assert_problem(too_big, 413, "body-too-large")
    broken = await client.post(
        "/v1/orders", content=b"{not json", headers={**headers, "content-type": "application/json"}
    )
    assert_problem(broken, 400, "body-invalid")
    not_object = await client.post("/v1/orders", json=[1, 2], headers=headers)
    assert_problem(not_object, 400, "body-invalid")
    form = await client.post(
        "/v1/orders",
        content=b"a=b",
        headers={**headers, "content-type": "application/x-www-form-urlencoded"},
    )
    assert_problem(form, 415, "unsupported-media-type")


# -- request ids and the audit trail -------------------------------------------------------------


async def test_request_id_is_echoed_when_sane(client: httpx.AsyncClient, token_for: Token) -> None:
    headers = bearer(token_for("support-console"))
    kept = await client.get("/v1/orders/O-1001", headers={**headers, "X-Request-ID": "req-123"})
    assert kept.headers["x-request-id"] == "req-123"
    replaced = await client.get("/v1/orders/O-1001", headers={**headers, "X-Request-ID": "x" * 200})
    assert (
        replaced.headers["x-request-id"] != "x" * 200
        and len(replaced.headers["x-request-id"]) == 32
    )
    problem = await client.get("/v1/nowhere", headers={**headers, "X-Request-ID": "req-404"})
    assert problem.json()["request_id"] == "req-404"


async def test_every_call_writes_exactly_one_audit_line(
    client: httpx.AsyncClient, token_for: Token, audit_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    support = bearer(token_for("support-console"))
    calls = [
        ("GET", "/v1/orders/O-1001", support, 200),
        ("GET", "/v1/orders/O-1001", {}, 401),
        ("GET", "/v1/customers/C-1", bearer(token_for("outsider")), 403),
        ("GET", "/v1/unknown", support, 404),
        ("PUT", "/v1/orders", support, 405),
        ("GET", "/v1/orders", {**support}, 200),
    ]
    before = len(audit_lines())
    ids = []
    for method, path, headers, status in calls:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == status, (method, path, response.text)
        ids.append(response.headers["x-request-id"])
    events = audit_lines()[before:]
    assert [e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"] for e in events] == ids
    assert [e["httpRequest"]["status"] for e in events] == [c[3] for c in calls]
    allowed = events[0]["protoPayload"]
    decision = allowed["metadata"]["decision"]
    assert {k: decision[k] for k in ("allow", "reason", "rule")} == {
        "allow": True, "reason": "allowed", "rule": "support",
    }  # fmt: skip
    assert allowed["authenticationInfo"]["principalSubject"] == "support-console"
    assert "support" in decision["roles"]
    assert allowed["request"]["query"] == "get_order"
    assert allowed["request"]["databaseRole"] == "shop_reader"
    assert allowed["response"]["rowCount"] == 1
    denied = events[1]["protoPayload"]
    assert denied["authenticationInfo"] is None and denied["status"]["message"] == "token-missing"
    assert events[2]["protoPayload"]["metadata"]["decision"]["reason"] == "no-allow-role"
    raw = "\n".join(json.dumps(e) for e in events)
    assert token_for("support-console")[:40] not in raw  # never the token


async def test_redacted_parameters_are_hashed_in_the_audit(
    client: httpx.AsyncClient, token_for: Token, audit_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    response = await client.post(
        "/v1/orders",
        json={
            "order_id": f"O-{time.time_ns() % 10**12}",
            "customer_id": "C-2",
            "total_cents": 424242,
        },
        headers=bearer(token_for("order-writer")),
    )
    assert response.status_code == 200, response.text
    event = next(
        e
        for e in reversed(audit_lines())
        if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
        == response.headers["x-request-id"]
    )
    shown = event["protoPayload"]["request"]["params"]["total_cents"]["value"]
    assert shown.startswith("redacted:hmac-sha256:") and "424242" not in json.dumps(event)
    assert event["protoPayload"]["response"]["commitTimestamp"] == response.json()["commit_timestamp"]


async def test_audit_chain_verifies(
    client: httpx.AsyncClient,
    token_for: Token,
    audit_lines: Callable[[], list[dict[str, Any]]],
    audit_path: Path,
    audit_key: str,
) -> None:
    from gateway.audit.chain import AuditKeys
    from gateway.audit.verify import verify_trail

    for _ in range(3):  # events of its own, whatever ran before
        await client.get("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    assert len(audit_lines()) >= 3
    assert verify_trail([audit_path], AuditKeys.from_secret(audit_key.encode()).chain).ok


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["issuers"]["okta"]["ready"] is True
    assert len(body["policy_sha256"]) == 64


async def test_openapi_describes_the_policy(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert set(doc["paths"]) == {
        "/v1/orders/{order_id}",
        "/v1/orders",
        "/v1/orders/{order_id}/items",
        "/v1/customers/{customer_id}",
        "/v1/orders/{order_id}/cancel",  # waits for approval: /approvals is documented too
        "/approvals",
        "/approvals/{id}",
        "/approvals/{id}/approve",
        "/approvals/{id}/reject",
    }
    cancel = doc["paths"]["/v1/orders/{order_id}/cancel"]["post"]
    assert set(cancel["responses"]) >= {"200", "202", "403", "409"}
    assert {"$ref": "#/components/parameters/ApprovalId"} in cancel["parameters"]
    approvals = doc["paths"]["/approvals"]["get"]
    assert {p["name"] for p in approvals["parameters"]} == {"state", "limit", "cursor"}
    answer = approvals["responses"]["200"]["content"]["application/json"]["schema"]
    assert "next_cursor" in answer["properties"]
    assert "cursor-invalid" in approvals["responses"]["400"]["description"]
    listing = doc["paths"]["/v1/orders"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    # tenant is claim-bound, after_created and after_order cursor-bound: hidden; the cursor shows
    assert names == {"status", "min_total_cents", "limit", "cursor"}
    create = doc["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert "tenant" not in create["properties"] and set(create["required"]) == {
        "order_id",
        "customer_id",
        "total_cents",
    }


async def test_metrics_count_requests_and_expose_component_state(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    def count(text: str, line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    series = 'spangate_requests_total{code="ok",route="/v1/orders/{order_id}",status="200"}'
    before = count((await client.get("/metrics")).text, series)
    await client.get("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert count(text, series) == before + 1
    assert count(text, 'spangate_jwks_keys_ready{issuer="okta"}') == 1
    assert count(text, "spangate_audit_events_written_total{sink=") > 0
    assert "spangate_audit_queue_depth{sink=" in text and "spangate_audit_flush_seconds_max{" in text
    assert "spangate_request_duration_seconds_bucket" in text and "spangate_policy_info{" in text


async def test_requests_leave_nothing_unrecorded(
    client: httpx.AsyncClient, gateway: Any, token_for: Token
) -> None:
    # Batched audit sinks wait for their window only while requests are on their way to the
    # trail; the count must return to zero whatever the outcome.
    await client.get("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    await client.get("/v1/orders/O-1001")
    await client.get("/v1/nothing", headers=bearer(token_for("support-console")))
    assert gateway.unrecorded == 0


async def test_the_example_write_is_idempotent_with_a_key(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    # The demo database carries the gateway's own tables (what `spangate init-db` creates).
    order_id = f"O-{time.time_ns() % 10**12}"
    headers = {**bearer(token_for("order-writer")), "Idempotency-Key": f"key-{order_id}"}
    body = {"order_id": order_id, "customer_id": "C-1", "total_cents": 77}
    first = await client.post("/v1/orders", json=body, headers=headers)
    again = await client.post("/v1/orders", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert again.status_code == 200 and again.content == first.content  # replayed, not re-run
    reused = await client.post("/v1/orders", json={**body, "total_cents": 78}, headers=headers)
    assert_problem(reused, 422, "idempotency-key-reused")


DOCS = Path(__file__).resolve().parents[1] / "docs"


def _doc_table_names(page: str, heading: str, prefix: str = "") -> set[str]:
    """The first-column names (in backticks) of the table rows under ``heading`` of a docs page."""
    text = (DOCS / page).read_text()
    assert f"\n{heading}\n" in text, f"{page} has no heading {heading!r}"
    body = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return {
        line.split("`")[1]
        for line in body.splitlines()
        if line.startswith(f"| `{prefix}")
    }


async def test_every_metric_and_readyz_field_is_documented(
    client: httpx.AsyncClient, gateway: Any
) -> None:
    """Dashboards and probes are built from the docs' tables: they name exactly what is served."""
    page = "reference/health-and-metrics.md"
    text = (await client.get("/metrics")).text
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    if gateway.reloader is None:  # the reload counter exists once a reloader does
        served.add("spangate_policy_reloads_total")
    assert _doc_table_names(page, "## `/metrics`") == served

    body = (await client.get("/readyz")).json()
    fields = {key for key in body if not isinstance(body[key], dict)}
    fields |= {f"audit.{key}" for key, value in body["audit"].items() if not isinstance(value, dict)}
    for sink in body["audit"]["sinks"].values():
        fields |= {f"audit.sinks.NAME.{key}" for key in sink}
    fields |= {f"budgets.{key}" for key in body["budgets"]}
    for issuer in body["issuers"].values():
        fields |= {f"issuers.NAME.{key}" for key in issuer}
        fields |= {f"issuers.NAME.introspection.{key}" for key in issuer.get("introspection", {})}
    documented = _doc_table_names(page, "## `/readyz`")
    assert fields - {"issuers.NAME.introspection.cached_inactive"} <= documented
    if not any("introspection" in issuer for issuer in body["issuers"].values()):
        documented = {f for f in documented if not f.startswith("issuers.NAME.introspection")}
    assert documented <= fields


def test_every_setting_is_in_the_settings_table() -> None:
    """Operators configure the gateway from the docs' settings table: it names every setting, and
    nothing else, in its first column."""
    from gateway.settings import Settings

    table = (DOCS / "reference" / "settings.md").read_text()
    documented = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([A-Z_]+)`", row.split("|")[1])
    }
    settings = {
        "SPANNER_EMULATOR_HOST" if name == "spanner_emulator_host" else f"SPANGATE_{name.upper()}"
        for name in Settings.model_fields
    }
    # OpenTelemetry's standard variables are read by gateway.tracing, not by Settings.
    otel = {name for name in documented if name.startswith("OTEL_")}
    tracing = (Path(__file__).parent.parent / "gateway" / "tracing.py").read_text()
    assert {name for name in otel if name not in tracing} == set(), "OTEL_ names not read"
    assert settings - documented == set(), "settings missing from docs/reference/settings.md"
    assert documented - settings - otel == set(), "docs/reference/settings.md names no such setting"
