"""Which identity-provider URLs the gateway calls: https, or http to loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.discovery import metadata_urls
from gateway.auth.urls import issuer_problem, require_safe_url, url_problem
from gateway.errors import PolicyError
from gateway.policy.load import load_policy

POLICY = Path(__file__).resolve().parent / "data" / "tokens.policy.yaml"
LOOPBACK = {
    "ISSUER": "http://127.0.0.1:9/oauth2/default",
    "ORG_ISSUER": "http://127.0.0.1:9",
    "ORG_ONLY_ISSUER": "http://localhost:9",
}


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/oauth2/default",
        "https://idp.example:8443/keys",
        "http://localhost:9400/oauth2/default",
        "http://127.0.0.1:9400/x",
        "http://127.8.9.10/x",
        "http://[::1]:9400/x",
    ],
)
def test_allowed(url: str) -> None:
    assert url_problem(url) is None
    assert require_safe_url(url, "x") == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://idp.example/oauth2/default", "https"),
        ("http://10.0.0.1/keys", "https"),
        ("http://localhost.evil.example/keys", "https"),
        ("http://[::2]/keys", "https"),
        ("ftp://idp.example/keys", "https"),
        ("https:///keys", "no host"),
        ("https://user:pw@idp.example/keys", "credentials"),
        ("https://idp.example:99999/keys", "not a valid URL"),
        ("idp.example/keys", "no host"),
    ],
)
def test_refused(url: str, why: str) -> None:
    problem = url_problem(url)
    assert problem is not None and why in problem
    with pytest.raises(ValueError, match=why):
        require_safe_url(url, "jwks_uri")


def test_an_issuer_has_no_query_or_fragment() -> None:
    assert issuer_problem("https://idp.example/oauth2/default") is None
    assert issuer_problem("https://idp.example/?tenant=1") is not None
    assert issuer_problem("https://idp.example/#x") is not None


def test_metadata_urls_in_order() -> None:
    assert metadata_urls("https://idp.example/oauth2/default") == [
        "https://idp.example/oauth2/default/.well-known/openid-configuration",
        "https://idp.example/oauth2/default/.well-known/oauth-authorization-server",
        "https://idp.example/.well-known/oauth-authorization-server/oauth2/default",
    ]
    assert metadata_urls("https://idp.example") == [
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server",
    ]


def test_the_policy_loads_with_loopback_urls() -> None:
    load_policy(POLICY, env=LOOPBACK)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"ISSUER": "http://idp.example/oauth2/default"}, "issuer"),
        ({"ORG_ISSUER": "http://idp.example"}, "issuer"),
    ],
)
def test_the_policy_refuses_plain_http(env: dict[str, str], field: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(POLICY, env={**LOOPBACK, **env})
    message = str(refused.value)
    assert "must be an https URL" in message
    assert "tokens.policy.yaml:" in message and field in message


def test_the_policy_refuses_plain_http_endpoints(tmp_path: Path) -> None:
    text = (
        POLICY.read_text()
        .replace(
            "      endpoint: ${ISSUER}/v1/introspect",
            "      endpoint: http://idp.example/v1/introspect",
        )
        .replace(
            "    preset: okta\n\nidentities",
            "    preset: okta\n    jwks_uri: http://k.example/k\n\nidentities",
        )
    )
    policy = tmp_path / "p.yaml"
    policy.write_text(text)
    with pytest.raises(PolicyError) as refused:
        load_policy(policy, env=LOOPBACK)
    message = str(refused.value)
    assert "introspection endpoint must be an https URL" in message
    assert "jwks_uri must be an https URL" in message
