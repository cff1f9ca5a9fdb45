"""The local Okta-shaped OpenID provider (dev/idp/server.js) through gateway.dev.idp."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.dev.idp import (
    ACCESS_TOKEN_TYPE,
    DEFAULT_IDP_DIR,
    ID_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    IdpError,
    IdpProcess,
    TokenError,
    fetch_token,
    load_clients,
    start_idp,
)
from gateway.dev.keys import generate_signing_keys
from gateway.dev.ports import free_port

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _get_json(url: str) -> Any:
    response = httpx.get(url, timeout=10.0)
    response.raise_for_status()
    return response.json()


def _jwks(idp: IdpProcess) -> dict[str, dict[str, Any]]:
    """The provider's published keys by kid."""
    keys = _get_json(idp.jwks_uri)["keys"]
    return {k["kid"]: k for k in keys}


def _verify(idp: IdpProcess, token: str, alg: str, audience: str = "api://shop") -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWK(_jwks(idp)[header["kid"]])
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key,
        algorithms=[alg],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
    )
    return claims


def _secret(client_id: str) -> str:
    for client in load_clients():
        if client["client_id"] == client_id:
            secret: str = client["client_secret"]
            return secret
    raise KeyError(client_id)


def _token(idp: IdpProcess, client_id: str, **kwargs: Any) -> str:
    return fetch_token(idp.issuer, client_id, _secret(client_id), **kwargs)


@pytest.mark.parametrize("document", ["openid-configuration", "oauth-authorization-server"])
def test_discovery_at_both_well_known_urls(idp: IdpProcess, document: str) -> None:
    meta = _get_json(f"{idp.issuer}/.well-known/{document}")
    assert idp.issuer == f"http://127.0.0.1:{idp.port}/oauth2/default"
    assert meta["issuer"] == idp.issuer
    assert meta["jwks_uri"] == f"{idp.issuer}/v1/keys"
    assert meta["token_endpoint"] == f"{idp.issuer}/v1/token"
    assert meta["introspection_endpoint"] == f"{idp.issuer}/v1/introspect"
    assert meta["revocation_endpoint"] == f"{idp.issuer}/v1/revoke"
    assert meta["grant_types_supported"] == ["client_credentials", TOKEN_EXCHANGE]


def test_jwks_publishes_rsa_and_ec_public_keys_only(idp: IdpProcess) -> None:
    keys = list(_jwks(idp).values())
    by_alg = {k["alg"]: k for k in keys}
    assert by_alg["RS256"]["kty"] == "RSA"
    assert by_alg["ES256"]["kty"] == "EC"
    assert by_alg["ES256"]["crv"] == "P-256"
    for key in keys:
        assert key["use"] == "sig"
        assert not PRIVATE_MEMBERS & key.keys(), key


def test_support_console_token_is_okta_shaped(idp: IdpProcess) -> None:
    token = _token(idp, "support-console")
    header = jwt.get_unverified_header(token)
    assert "typ" not in header
    assert header["alg"] == "RS256"
    assert set(header) == {"alg", "kid"}
    assert header["kid"] in _jwks(idp)

    claims = _verify(idp, token, "RS256")
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == "api://shop"
    assert claims["sub"] == "support-console"
    assert claims["cid"] == "support-console"
    assert claims["ver"] == 1
    assert claims["scp"] == []
    assert "scope" not in claims
    assert "client_id" not in claims
    assert claims["groups"] == ["support"]
    assert claims["tenant"] == "t1"
    assert claims["uid"] == "00u-support-1"
    assert claims["exp"] - claims["iat"] == 3600
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_order_agent_gets_es256_token_with_scp_array(idp: IdpProcess) -> None:
    token = _token(idp, "order-agent", scope="orders.read")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = _verify(idp, token, "ES256")
    assert claims["scp"] == ["orders.read"]
    assert claims["sub"] == claims["cid"] == "order-agent"
    assert claims["agent"] is True
    assert claims["tenant"] == "t1"


def test_scope_outside_the_clients_list_is_refused(idp: IdpProcess) -> None:
    with pytest.raises(TokenError) as refused:
        _token(idp, "order-agent", scope="orders.write")
    assert refused.value.status_code == 400
    assert refused.value.error == "invalid_scope"
    with pytest.raises(TokenError) as refused:
        _token(idp, "support-console", scope="orders.read")
    assert refused.value.error == "invalid_scope"


def test_token_without_resource_defaults_to_api_shop(idp: IdpProcess) -> None:
    token = _token(idp, "order-writer", scope="orders.write", resource=None)
    claims = _verify(idp, token, "RS256")
    assert claims["aud"] == "api://shop"
    assert claims["scp"] == ["orders.write"]


def test_short_lived_token_lifetime(idp: IdpProcess) -> None:
    claims = _verify(idp, _token(idp, "short-lived"), "RS256")
    assert claims["exp"] - claims["iat"] == 2


def test_bad_secret_and_unknown_resource_are_refused(idp: IdpProcess) -> None:
    with pytest.raises(TokenError) as refused:
        fetch_token(idp.issuer, "support-console", "wrong-secret")
    assert refused.value.error == "invalid_client"
    with pytest.raises(TokenError) as refused:
        _token(idp, "support-console", resource="api://elsewhere")
    assert refused.value.error == "invalid_target"


def test_opaque_token_introspects_then_is_revoked(idp: IdpProcess) -> None:
    token = _token(idp, "support-console", resource="api://shop-opaque")
    assert token.count(".") == 0  # not a JWT
    caller = ("order-writer", _secret("order-writer"))
    owner = ("support-console", _secret("support-console"))

    with httpx.Client(timeout=10.0) as http:
        unauthenticated = http.post(idp.introspection_endpoint, data={"token": token})
        assert unauthenticated.status_code in (400, 401)

        info = http.post(idp.introspection_endpoint, data={"token": token}, auth=caller).json()
        assert info["active"] is True
        assert info["client_id"] == info["sub"] == "support-console"
        assert info["aud"] == "api://shop-opaque"
        assert info["groups"] == ["support"]
        assert info["tenant"] == "t1"

        as_post = http.post(
            idp.introspection_endpoint,
            data={
                "token": token,
                "client_id": "spangate-gateway",
                "client_secret": _secret("spangate-gateway"),
            },
        ).json()
        assert as_post["active"] is True
        wrong_secret = http.post(
            idp.introspection_endpoint,
            data={"token": token, "client_id": "spangate-gateway", "client_secret": "nope"},
        )
        assert wrong_secret.status_code in (400, 401)

        revoked = http.post(idp.revocation_endpoint, data={"token": token}, auth=owner)
        assert revoked.status_code == 200
        info = http.post(idp.introspection_endpoint, data={"token": token}, auth=caller).json()
        assert info == {"active": False}


def test_load_clients_has_the_personas() -> None:
    clients = {c["client_id"]: c for c in load_clients()}
    assert set(clients) == {
        "support-console",
        "support-lead",
        "order-agent",
        "order-writer",
        "outsider",
        "support-t2",
        "support-lead-t2",
        "suspended-support",
        "short-lived",
        "spangate-gateway",
        "k8s-payments-api",
        "k8s-billing-worker",
        "google-deployer",
        "google-unverified",
        "github-deploy",
    }
    assert clients["spangate-gateway"]["auth_method"] == "client_secret_post"
    assert clients["order-agent"]["alg"] == "ES256"
    assert clients["short-lived"]["access_token_ttl"] == 2


def test_generated_keys_are_private_with_unique_kids() -> None:
    keys = generate_signing_keys()["keys"]
    assert [(k["kty"], k["alg"], k["use"]) for k in keys] == [
        ("RSA", "RS256", "sig"),
        ("EC", "ES256", "sig"),
    ]
    assert keys[1]["crv"] == "P-256"
    assert all("d" in k for k in keys)
    assert len({k["kid"] for k in keys}) == 2
    assert generate_signing_keys()["keys"][0]["kid"] != keys[0]["kid"]


def test_stop_ends_the_process(idp_keys: Path) -> None:
    with start_idp(idp_dir=DEFAULT_IDP_DIR, keys_path=idp_keys) as idp:
        assert idp.running
        assert 0 < idp.startup_seconds < 20
        pid, port = idp.pid, idp.port
        _get_json(f"{idp.issuer}/.well-known/openid-configuration")
    assert not idp.running
    assert idp.returncode == 0  # SIGTERM handled: a clean exit
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass
    idp.stop()  # idempotent
    assert "SIGTERM" in idp.stderr_text()


def test_bad_config_fails_with_the_providers_message(tmp_path: Path) -> None:
    rsa_only = {"keys": generate_signing_keys()["keys"][:1]}
    keys_path = tmp_path / "keys.json"
    keys_path.write_text(json.dumps(rsa_only))
    with pytest.raises(IdpError, match="no EC P-256 key with alg ES256"):
        start_idp(idp_dir=DEFAULT_IDP_DIR, keys_path=keys_path)


def test_missing_node_modules_says_npm_ci(tmp_path: Path) -> None:
    (tmp_path / "server.js").write_text("")
    with pytest.raises(IdpError, match="npm ci --prefix"):
        start_idp(idp_dir=tmp_path, keys_path=tmp_path / "keys.json")


def test_explicit_busy_port_is_refused(idp: IdpProcess, idp_keys: Path) -> None:
    with pytest.raises(IdpError, match="in use"):
        start_idp(idp_dir=DEFAULT_IDP_DIR, keys_path=idp_keys, port=idp.port)


def test_free_port_is_not_answered() -> None:
    port = free_port()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass


def _exchange(idp: IdpProcess, actor: str, subject_token: str, **params: str) -> httpx.Response:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        **params,
    }
    return httpx.post(idp.token_endpoint, data=data, auth=(actor, _secret(actor)), timeout=10.0)


def test_token_exchange_mints_act_for_the_actor(idp: IdpProcess) -> None:
    user_token = _token(idp, "support-console")
    user = _verify(idp, user_token, "RS256")
    response = _exchange(idp, "order-agent", user_token, scope="orders.read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"  # noqa: S105
    token = body["access_token"]
    assert "typ" not in jwt.get_unverified_header(token)
    claims = _verify(idp, token, "ES256")  # signed like the actor's own tokens
    assert claims["sub"] == "support-console"
    assert claims["act"] == {"sub": "order-agent"}
    assert claims["cid"] == "order-agent"
    assert claims["scp"] == ["orders.read"]
    assert claims["groups"] == ["support"]
    assert claims["tenant"] == "t1"
    assert claims["uid"] == "00u-support-1"
    assert claims["exp"] <= user["exp"]


def test_token_exchange_of_an_opaque_token_nests_the_earlier_actor(idp: IdpProcess) -> None:
    user_token = _token(idp, "support-console", resource="api://shop-opaque")
    first = _exchange(idp, "order-agent", user_token, resource="api://shop-opaque")
    assert first.status_code == 200, first.text
    opaque = first.json()["access_token"]
    assert opaque.count(".") == 0
    info = httpx.post(
        idp.introspection_endpoint,
        data={"token": opaque},
        auth=("order-writer", _secret("order-writer")),
        timeout=10.0,
    ).json()
    assert info["active"] is True
    assert info["sub"] == "support-console"
    assert info["act"] == {"sub": "order-agent"}
    assert info["client_id"] == "order-agent"

    second = _exchange(idp, "order-writer", opaque)
    assert second.status_code == 200, second.text
    claims = _verify(idp, second.json()["access_token"], "RS256")
    assert claims["sub"] == "support-console"
    assert claims["act"] == {"sub": "order-writer", "act": {"sub": "order-agent"}}


def test_token_exchange_can_return_an_id_token(idp: IdpProcess) -> None:
    user_token = _token(idp, "support-console")
    response = _exchange(idp, "support-console", user_token, requested_token_type=ID_TOKEN_TYPE)
    assert response.status_code == 200, response.text
    assert response.json()["issued_token_type"] == ID_TOKEN_TYPE
    token = response.json()["access_token"]
    key = jwt.PyJWK(_jwks(idp)[jwt.get_unverified_header(token)["kid"]])
    claims = jwt.decode(
        token, key=key, algorithms=["RS256"], audience="support-console", issuer=idp.issuer
    )
    assert claims["sub"] == "support-console"
    assert isinstance(claims["at_hash"], str)
    assert "scp" not in claims and "cid" not in claims


@pytest.mark.parametrize(
    ("subject", "params", "error"),
    [
        ("garbage", {}, "invalid_grant"),
        (
            "VALID",
            {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"},
            "invalid_request",
        ),
        ("VALID", {"scope": "orders.write"}, "invalid_scope"),
        ("VALID", {"resource": "api://elsewhere"}, "invalid_target"),
    ],
)
def test_token_exchange_refusals(
    idp: IdpProcess, subject: str, params: dict[str, str], error: str
) -> None:
    token = _token(idp, "support-console") if subject == "VALID" else subject
    response = _exchange(idp, "order-agent", token, **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error


def test_token_exchange_refuses_a_token_signed_by_another_key(idp: IdpProcess) -> None:
    forged_key = generate_signing_keys()["keys"][0]
    real_kid = next(k["kid"] for k in _jwks(idp).values() if k["alg"] == "RS256")
    forged = jwt.encode(
        {"iss": idp.issuer, "sub": "admin", "aud": "api://shop", "exp": 4_000_000_000},
        jwt.PyJWK(forged_key).key,
        algorithm="RS256",
        headers={"kid": real_kid},
    )
    response = _exchange(idp, "order-agent", forged)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


# -- workload shapes (clients with "shape") ---------------------------------------------------------

WORKLOAD_AUDIENCE = "https://spangate.test"


def _workload(
    idp: IdpProcess, client_id: str, audience: str | None = WORKLOAD_AUDIENCE
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A workload client's token for ``audience`` (None: it names none), verified with the
    provider's keys: its header and claims."""
    token = _token(idp, client_id, resource=audience)
    header = jwt.get_unverified_header(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwt.PyJWK(_jwks(idp)[header["kid"]]),
        algorithms=["RS256"],
        audience=audience or WORKLOAD_AUDIENCE,
        issuer=idp.issuer,
        options={"require": ["iss", "aud", "sub", "iat", "exp"]},
    )
    return header, claims


def test_a_kubernetes_client_gets_a_projected_service_account_token(idp: IdpProcess) -> None:
    header, claims = _workload(idp, "k8s-payments-api")
    assert set(header) == {"alg", "kid"}
    assert set(claims) == {"aud", "exp", "iat", "nbf", "iss", "jti", "kubernetes.io", "sub"}
    assert claims["aud"] == [WORKLOAD_AUDIENCE]
    assert claims["sub"] == "system:serviceaccount:payments:api"
    assert claims["kubernetes.io"]["namespace"] == "payments"
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "api"
    api = "https://kubernetes.default.svc.cluster.local"
    _, default = _workload(idp, "k8s-payments-api", audience=api)
    assert default["aud"] == [api]
    _, unnamed = _workload(idp, "k8s-payments-api", audience=None)  # the first audience
    assert unnamed["aud"] == [WORKLOAD_AUDIENCE]


def test_a_google_client_gets_a_google_id_token(idp: IdpProcess) -> None:
    header, claims = _workload(idp, "google-deployer")
    assert header["typ"] == "JWT"
    assert set(claims) == {"aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"}
    assert claims["aud"] == WORKLOAD_AUDIENCE  # a string, as Google writes it
    assert claims["sub"] == claims["azp"] == "108562830391273012345"
    assert claims["email_verified"] is True


def test_a_github_actions_client_gets_a_job_token(idp: IdpProcess) -> None:
    header, claims = _workload(idp, "github-deploy")
    assert header["typ"] == "JWT"
    assert claims["sub"] == "repo:octo-org/shop:environment:prod"
    assert claims["aud"] == WORKLOAD_AUDIENCE
    for name in ("repository", "repository_owner", "ref", "environment", "workflow_ref", "nbf"):
        assert name in claims
    assert not {"ver", "cid", "scp", "client_id", "scope"} & set(claims)


def test_a_workload_client_gets_tokens_only_for_its_audiences(idp: IdpProcess) -> None:
    with pytest.raises(TokenError) as caught:
        _token(idp, "github-deploy", resource="https://evil.example")
    assert caught.value.error == "invalid_target"
    with pytest.raises(TokenError):
        _token(idp, "support-console", resource=WORKLOAD_AUDIENCE)
