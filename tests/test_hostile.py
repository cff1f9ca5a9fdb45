"""Hostile input found in review: each gets a clear 4xx problem, never a 500, and is audited."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from test_gateway import assert_problem, bearer, claims_for, mint

from gateway.auth.presets import PRESETS, principal_from_claims
from gateway.auth.principal import claim_value
from gateway.policy.types import TypeProblem, coerce, parse_type

Token = Callable[..., str]


def _raw_post(token: str, body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {**bearer(token), "content-type": "application/json"}}


@pytest.mark.parametrize(
    "body",
    [
        b'{"order_id":"O-5","customer_id":"C-1","total_cents":5,"tenant":"\\ud800"}',  # lone surrogate
        b'{"order_id":"O-5","order_id":"O-6","customer_id":"C-1","total_cents":5}',  # duplicate key
        b'{"order_id":"O-5","customer_id":"C-1","total_cents":NaN}',  # not JSON
        b'{"order_id":"O-5","customer_id":"C-1","total_cents":1e400}',  # Infinity in disguise
        b'{"order_id":"O-5","customer_id":"C-1","total_cents":-1E+999}',
        b"[" * 5000,  # nests too deeply
        '{"order_id":"O-5"}'.encode("utf-16"),  # not UTF-8
    ],
)
async def test_bodies_other_readers_would_see_differently_are_refused(
    client: httpx.AsyncClient,
    token_for: Token,
    body: bytes,
    audit_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    response = await client.post("/v1/orders", **_raw_post(token_for("order-writer"), body))
    assert_problem(response, 400, "body-invalid")
    rid = response.headers["x-request-id"]
    assert any(e["insertId"] == rid or rid in json.dumps(e) for e in audit_lines()[-5:])


async def test_a_deep_body_from_a_caller_without_a_role_is_not_a_500(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    response = await client.post("/v1/orders", **_raw_post(token_for("outsider"), b'{"a":' * 2000))
    assert_problem(response, 403, "no-allow-role")  # whatever its body holds


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "body-invalid"),
        (b'{"a":1,"a":2}', "application/json", 400, "body-invalid"),
        (b"x" * (2 * 1024 * 1024), "application/json", 413, "body-too-large"),
        (b"order_id=O-1", "application/x-www-form-urlencoded", 415, "unsupported-media-type"),
    ],
)
async def test_the_roles_are_judged_before_the_body(
    client: httpx.AsyncClient,
    token_for: Token,
    content: bytes,
    content_type: str,
    status: int,
    code: str,
    audit_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    """Token, route, roles, then parameters (docs/security.md): a caller without a role gets
    403 whatever its body, and learns nothing of what the body must be; one with a role gets
    the body's refusal."""
    headers = {"content-type": content_type}
    outsider = await client.post(
        "/v1/orders", content=content, headers={**bearer(token_for("outsider")), **headers}
    )
    assert_problem(outsider, 403, "no-allow-role")
    rid = outsider.headers["x-request-id"]
    (event,) = [e for e in audit_lines()[-20:] if rid in json.dumps(e)]
    assert event["httpRequest"]["status"] == 403
    writer = await client.post(
        "/v1/orders", content=content, headers={**bearer(token_for("order-writer")), **headers}
    )
    assert writer.status_code == status and writer.json()["code"] == code, writer.text


async def test_the_trail_keeps_working_after_hostile_bodies(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    await client.post(
        "/v1/orders",
        **_raw_post(token_for("order-writer"), b'{"tenant":"\\udfff","order_id":"O-1"}'),
    )
    response = await client.get("/v1/orders/O-1001", headers=bearer(token_for("support-console")))
    assert response.status_code == 200, response.text  # the sink is healthy: nothing refused


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": "1" * 5000}, "limit"), ({"min_total_cents": "9" * 30}, "min_total_cents")],
)
async def test_huge_integers_are_400(
    client: httpx.AsyncClient, token_for: Token, params: dict[str, str], param: str
) -> None:
    response = await client.get(
        "/v1/orders", params=params, headers=bearer(token_for("support-console"))
    )
    assert assert_problem(response, 400, "param-invalid")["param"] == param


async def test_a_huge_integer_in_a_body_is_400(client: httpx.AsyncClient, token_for: Token) -> None:
    body = {"order_id": "O-7", "customer_id": "C-1", "total_cents": "9" * 4500}
    response = await client.post("/v1/orders", json=body, headers=bearer(token_for("order-writer")))
    assert assert_problem(response, 400, "param-invalid")["param"] == "total_cents"


async def test_bad_utf8_in_the_query_string_is_400(
    client: httpx.AsyncClient, token_for: Token
) -> None:
    response = await client.get(
        "/v1/orders?status=%FF", headers=bearer(token_for("support-console"))
    )
    assert_problem(response, 400, "query-invalid")


@pytest.mark.parametrize(
    "path", ["/v1/orders", "/v1/orders/O-1001", "/approvals", f"/approvals/{'1' * 32}"]
)
async def test_an_anonymous_callers_query_string_is_judged_after_its_token(
    client: httpx.AsyncClient, token_for: Token, path: str
) -> None:
    """The token first: without one, a query string that is not UTF-8 is 401 (nothing about
    the caller's input is judged before its token), with one 400 ``query-invalid``."""
    anonymous = await client.get(f"{path}?%ff=1")
    assert_problem(anonymous, 401, "token-missing")
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="spangate"'
    in_query = await client.get(f"{path}?access_token=%ff")
    assert_problem(in_query, 401, "token-malformed")  # a token in the query, however encoded
    known = await client.get(f"{path}?%ff=1", headers=bearer(token_for("support-console")))
    assert_problem(known, 400, "query-invalid")


def _unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.AAAA"


async def test_an_issuer_that_is_not_a_url_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/orders/O-1001", headers=bearer(_unsigned({"iss": "http://[", "sub": "x"}))
    )
    assert_problem(response, 401, "issuer-unknown")


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
async def test_a_token_that_never_expires_is_refused(
    client: httpx.AsyncClient, idp_keys: Path, idp: Any, value: str
) -> None:
    token = mint(idp_keys, claims_for(idp.issuer))
    header, payload, _ = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    text = json.dumps(claims).replace(str(claims["exp"]), value)
    kid_key = json.loads(idp_keys.read_text())["keys"]
    rsa = next(k for k in kid_key if k["kty"] == "RSA")
    signing_input = f"{header}.{jwt.utils.base64url_encode(text.encode()).decode()}"
    signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
        signing_input.encode(), jwt.PyJWK(rsa).key
    )
    forged = f"{signing_input}.{jwt.utils.base64url_encode(signature).decode()}"
    assert_problem(
        await client.get("/v1/orders/O-1001", headers=bearer(forged)), 401, "token-malformed"
    )


async def test_fixed_endpoints_answer_problems_too(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz")
    body = assert_problem(response, 405, "method-not-allowed")
    assert body["request_id"]
    encoded = await client.get("/%68ealthz")  # not /healthz: a policy path, and there is no token
    assert_problem(encoded, 401, "token-missing")


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("TIMESTAMP", "2026-01-31T12:00:00+99:00"),
        ("TIMESTAMP", "0001-01-01T00:00:00+01:00"),
        ("TIMESTAMP", "9999-12-31T23:59:59-01:00"),
        ("INT64", "1" * 5000),
        ("JSON", "[" * 5000),
    ],
)
def test_type_conversion_never_raises_anything_but_type_problem(type_: str, value: str) -> None:
    with pytest.raises(TypeProblem):
        coerce(parse_type(type_), value, from_text=True)


def test_float_overflow_is_a_type_problem() -> None:
    with pytest.raises(TypeProblem):
        coerce(parse_type("FLOAT64"), 10**400, from_text=False)


def test_nan_is_outside_every_range() -> None:
    from gateway.policy.bind import check_constraints, compile_param
    from gateway.policy.model import Param

    spec = compile_param("ratio", Param.model_validate({"type": "FLOAT64", "min": 0, "max": 1}))
    check_constraints(spec, 0.5)
    with pytest.raises(TypeProblem):
        check_constraints(spec, math.nan)


def test_timestamp_ranges_see_nanoseconds() -> None:
    from gateway.policy.bind import check_constraints, compile_param
    from gateway.policy.model import Param

    spec = compile_param(
        "at", Param.model_validate({"type": "TIMESTAMP", "min": "2026-01-01T00:00:00.000000500Z"})
    )
    check_constraints(
        spec, coerce(parse_type("TIMESTAMP"), "2026-01-01T00:00:00.000000600Z", from_text=True)
    )
    with pytest.raises(TypeProblem):
        check_constraints(
            spec, coerce(parse_type("TIMESTAMP"), "2026-01-01T00:00:00.000000100Z", from_text=True)
        )


def test_a_nested_claim_beats_a_flat_claim_with_a_dotted_name() -> None:
    claims = {"org": {"tenant": "t1"}, "org.tenant": "t2", "https://x.example/roles": ["a"]}
    assert claim_value(claims, "org.tenant") == "t1"
    assert claim_value(claims, "https://x.example/roles") == ["a"]  # dotted names still work


def test_a_groups_string_is_one_group() -> None:
    claims = {
        "iss": "i",
        "sub": "s",
        "groups": "Support Team",
        "scope": "a b",
        "exp": int(time.time()),
    }
    principal = principal_from_claims("x", PRESETS["oidc"], claims)
    assert principal.groups == frozenset({"Support Team"})
    assert principal.scopes == frozenset({"a", "b"})
