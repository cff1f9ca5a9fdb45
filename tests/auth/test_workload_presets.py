"""The workload presets (kubernetes, google, github-actions) on real keys and real pyjwt, the
issuer behind httpx.MockTransport; and how a dotted claim path resolves keys with dots."""

from __future__ import annotations

from typing import Any

import pytest
from authkit import Clock, FakeIdp, client_for, rsa_key
from pydantic import ValidationError

from gateway.auth.jwks import JwksCache
from gateway.auth.presets import GOOGLE_ISSUER, PRESETS
from gateway.auth.principal import MISSING, Principal, claim_value
from gateway.auth.verify import TokenVerifier
from gateway.errors import AuthError
from gateway.policy.model import Issuer

NOW = 1_800_000_000
CLUSTER = "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c"
GATEWAY = "https://spangate.example"
GITHUB = "https://token.actions.githubusercontent.com"


class Verifier:
    """One issuer of ``preset``, its fake IdP and a verifier on a fixed clock."""

    def __init__(self, preset: str, issuer: str, *, audience: Any = GATEWAY, **fields: Any):
        self.key = rsa_key("k1")
        self.issuer = issuer
        config = Issuer.model_validate(
            {"issuer": issuer, "audience": audience, "preset": preset, **fields}
        )
        clock = Clock(NOW)
        cache = JwksCache(
            name="w",
            issuer=issuer,
            client=client_for(FakeIdp(issuer=issuer, keys=[self.key])),
            clock=clock,
        )
        self.verifier = TokenVerifier({"w": config}, {"w": cache}, clock=clock)

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return self.key.sign({k: v for k, v in claims.items() if v is not None}, **header)

    async def verify(self, claims: dict[str, Any], **header: Any) -> Principal:
        return await self.verifier.verify(self.sign(claims, **header))

    async def refusal(self, claims: dict[str, Any], **header: Any) -> AuthError:
        with pytest.raises(AuthError) as caught:
            await self.verify(claims, **header)
        return caught.value


def projected(**change: Any) -> dict[str, Any]:
    """A projected service-account token's claims, as a kube-apiserver writes them."""
    base: dict[str, Any] = {
        "aud": [GATEWAY],
        "exp": NOW + 3600,
        "iat": NOW,
        "nbf": NOW,
        "iss": CLUSTER,
        "jti": "7d5c0e9a-2f4b-4bd5-9f5e-3b1f0a1c2d3e",
        "kubernetes.io": {
            "namespace": "payments",
            "node": {"name": "node-1", "uid": "0b7e0f4e-4a4c-4f0f-9a7b-0c1d2e3f4a5b"},
            "pod": {"name": "api-6d9f7c-x2x4z", "uid": "4c5d6e7f-8a9b-4c0d-8e1f-2a3b4c5d6e7f"},
            "serviceaccount": {"name": "api", "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
            "warnafter": NOW + 3000,
        },
        "sub": "system:serviceaccount:payments:api",
    }
    base.update(change)
    return base


def google(**change: Any) -> dict[str, Any]:
    """A Google-signed ID token of a service account (metadata server, format=full)."""
    base: dict[str, Any] = {
        "aud": GATEWAY,
        "azp": "108562830391273012345",
        "email": "deployer@shop-prod.iam.gserviceaccount.com",
        "email_verified": True,
        "exp": NOW + 3600,
        "iat": NOW,
        "iss": GOOGLE_ISSUER,
        "sub": "108562830391273012345",
    }
    base.update(change)
    return base


def github(**change: Any) -> dict[str, Any]:
    """A GitHub Actions OIDC token of a job deploying to environment prod."""
    base: dict[str, Any] = {
        "jti": "example-id",
        "sub": "repo:octo-org/shop:environment:prod",
        "aud": GATEWAY,
        "ref": "refs/heads/main",
        "sha": "example-sha",
        "repository": "octo-org/shop",
        "repository_owner": "octo-org",
        "repository_owner_id": "123",
        "repository_id": "456",
        "repository_visibility": "private",
        "run_id": "1",
        "run_number": "1",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "789",
        "workflow": "deploy",
        "workflow_ref": "octo-org/shop/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "octo-org/shop/.github/workflows/deploy.yml@refs/heads/main",
        "event_name": "push",
        "ref_type": "branch",
        "environment": "prod",
        "runner_environment": "github-hosted",
        "iss": GITHUB,
        "nbf": NOW - 5,
        "exp": NOW + 300,
        "iat": NOW,
    }
    base.update(change)
    return base


# --- claim paths ----------------------------------------------------------------------------------


def test_a_path_reaches_a_key_with_dots_inside() -> None:
    claims = projected()
    assert claim_value(claims, "kubernetes.io.namespace") == "payments"
    assert claim_value(claims, "kubernetes.io.serviceaccount.name") == "api"
    assert claim_value(claims, "kubernetes.io") == claims["kubernetes.io"]
    assert claim_value(claims, "kubernetes.io.nothing") is MISSING
    assert claim_value(claims, "kubernetes") is MISSING


def test_the_shortest_key_wins_and_a_dead_end_backtracks() -> None:
    both = {"kubernetes": {"io": {"namespace": "a"}}, "kubernetes.io": {"namespace": "b"}}
    assert claim_value(both, "kubernetes.io.namespace") == "a"  # the nested walk first
    dead_end = {"kubernetes": {"other": 1}, "kubernetes.io": {"namespace": "b"}}
    assert claim_value(dead_end, "kubernetes.io.namespace") == "b"
    inner = {"a": {"b.c": 1}}
    assert claim_value(inner, "a.b.c") == 1
    assert claim_value({"a.b.c": None}, "a.b.c") is None  # present, null: not MISSING
    assert claim_value({"act.sub": "x", "act": {}}, "act.sub") is MISSING  # NESTED_ONLY


def test_a_token_cannot_make_a_path_walk_explode() -> None:
    # Each object offers both "a" and "a.a": without remembering dead ends, a 60-part path would
    # be tried in Fibonacci(60) ways before it is found missing.
    depth = 60
    nodes: list[dict[str, Any]] = [{"end": 1}, {"end": 1}]
    for _ in range(depth):
        nodes.append({"a": nodes[-1], "a.a": nodes[-2]})
    path = ".".join(["a"] * depth + ["missing"])
    assert claim_value(nodes[-1], path) is MISSING


# --- kubernetes -------------------------------------------------------------------------------------


async def test_a_projected_service_account_token() -> None:
    k8s = Verifier("kubernetes", CLUSTER)
    principal = await k8s.verify(projected())
    assert principal.subject == "system:serviceaccount:payments:api"
    assert principal.iss == CLUSTER
    assert principal.claim("kubernetes.io.namespace") == "payments"
    assert principal.claim("kubernetes.io.pod.name") == "api-6d9f7c-x2x4z"
    assert principal.client_id is None and not principal.scopes and not principal.groups


@pytest.mark.parametrize(
    "aud",
    [
        [CLUSTER],  # the API server's default --api-audiences: the issuer
        ["https://kubernetes.default.svc"],
        ["https://kubernetes.default.svc.cluster.local"],
        "kubernetes.default.svc",
        ["Kubernetes.Default.svc"],
        # the gateway's audience beside the API server's: the API server accepts it too
        [CLUSTER, GATEWAY],
        [GATEWAY, "https://kubernetes.default.svc"],
    ],
)
async def test_a_default_token_for_the_api_server_is_refused_with_advice(aud: Any) -> None:
    refusal = await Verifier("kubernetes", CLUSTER).refusal(projected(aud=aud))
    assert refusal.code == "api-server-token"
    assert "projected service-account token with audience https://spangate.example" in str(
        refusal.detail
    )


async def test_another_audience_is_a_mismatch_with_advice() -> None:
    refusal = await Verifier("kubernetes", CLUSTER).refusal(projected(aud=["vault"]))
    assert refusal.code == "audience-mismatch"
    assert "projected service-account token" in str(refusal.detail)


async def test_a_legacy_secret_token_is_refused_as_an_api_server_token() -> None:
    k8s = Verifier("kubernetes", CLUSTER)
    legacy = {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "payments",
        "kubernetes.io/serviceaccount/service-account.name": "api",
        "sub": "system:serviceaccount:payments:api",
    }
    refusal = await k8s.refusal(legacy)
    assert refusal.code == "api-server-token"
    assert "projected service-account tokens" in str(refusal.detail)
    # refused before any signature is checked: nothing of the policy's issuer in the detail
    assert GATEWAY not in str(refusal.detail) and "issuer '" not in str(refusal.detail)
    # without a kubernetes issuer, it is simply an unknown issuer
    other = Verifier("github-actions", GITHUB)
    assert (await other.refusal(legacy)).code == "issuer-unknown"


@pytest.mark.parametrize(
    "change",
    [
        {"sub": "api"},
        {"sub": "system:node:node-1"},
        {"sub": "system:serviceaccount:payments"},
        {"kubernetes.io": {"namespace": "billing", "serviceaccount": {"name": "api"}}},
        {"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "admin"}}},
        {"kubernetes.io": "payments"},
    ],
)
async def test_a_sub_that_is_no_service_account_or_disagrees_is_malformed(
    change: dict[str, Any],
) -> None:
    refusal = await Verifier("kubernetes", CLUSTER).refusal(projected(**change))
    assert refusal.code == "token-malformed"


async def test_without_nested_claims_the_sub_alone_names_the_account() -> None:
    principal = await Verifier("kubernetes", CLUSTER).verify(projected(**{"kubernetes.io": None}))
    assert principal.subject == "system:serviceaccount:payments:api"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"audience": CLUSTER}, "is the Kubernetes API server's"),
        ({"audience": ["spangate", "https://kubernetes.default.svc"]}, "API server's"),
        # host names in any case, with a port
        ({"audience": "KUBERNETES.default.svc"}, "API server's"),
        ({"audience": "kubernetes.default.svc:443"}, "API server's"),
        ({"audience": "https://Kubernetes.Default.svc:443"}, "API server's"),
        ({"audience": CLUSTER.replace("https://container", "HTTPS://Container") + "/"}, "API"),
        (
            {"audience": "spangate", "introspection": {"client_id": "a", "client_secret": "b"}},
            "takes no introspection",
        ),
    ],
)
def test_kubernetes_issuer_load_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Issuer.model_validate({"issuer": CLUSTER, "preset": "kubernetes", **fields})


# --- google -----------------------------------------------------------------------------------------


async def test_a_google_id_token_names_its_service_account_by_email() -> None:
    g = Verifier("google", GOOGLE_ISSUER)
    principal = await g.verify(google(), typ="JWT")
    assert principal.subject == "deployer@shop-prod.iam.gserviceaccount.com"
    assert principal.claims["sub"] == "108562830391273012345"
    # Google writes iss with and without the scheme; the principal names the configured URL
    bare = await g.verify(google(iss="accounts.google.com"))
    assert bare.iss == GOOGLE_ISSUER
    assert bare.subject == principal.subject


async def test_a_google_issuer_elsewhere_keeps_the_rules_but_not_the_alias() -> None:
    g = Verifier("google", "http://127.0.0.1:9/google")
    assert (await g.verify(google(iss="http://127.0.0.1:9/google"))).subject.startswith("deployer")
    assert (await g.refusal(google(iss="accounts.google.com"))).code == "issuer-unknown"
    unverified = google(iss="http://127.0.0.1:9/google", email_verified=False)
    assert (await g.refusal(unverified)).code == "email-unverified"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"email_verified": False}, "email-unverified"),
        ({"email_verified": None}, "email-unverified"),
        ({"email_verified": "true"}, "email-unverified"),
        ({"email": None, "email_verified": None}, "email-missing"),
        ({"email": ""}, "email-missing"),
        ({"aud": "https://other.example"}, "audience-mismatch"),
        ({"aud": "32555940559.apps.googleusercontent.com"}, "audience-mismatch"),
    ],
)
async def test_google_refusals(change: dict[str, Any], code: str) -> None:
    refusal = await Verifier("google", GOOGLE_ISSUER).refusal(google(**change))
    assert refusal.code == code
    if code == "audience-mismatch":
        assert "--audiences=https://spangate.example" in str(refusal.detail)


async def test_refuse_id_tokens_does_not_apply_under_google() -> None:
    # A Google ID token is an ID token: its being one is no reason to refuse it here.
    marked = google(at_hash="x", nonce="n")
    assert (await Verifier("google", GOOGLE_ISSUER).verify(marked)).subject.startswith("deployer")
    elsewhere = "http://127.0.0.1:9/google"  # Google's own issuer takes preset google only
    oidc = Verifier("oidc", elsewhere)
    assert (await oidc.refusal({**marked, "iss": elsewhere})).code == "token-malformed"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"audience": GATEWAY, "refuse_id_tokens": True}, "refuse_id_tokens does not apply"),
        ({"audience": GATEWAY, "refuse_id_tokens": False}, "refuse_id_tokens does not apply"),
        ({"audience": "32555940559.apps.googleusercontent.com"}, "must be the gateway's URL"),
        ({"audience": [GATEWAY, "spangate"]}, "must be the gateway's URL"),
    ],
)
def test_google_issuer_load_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Issuer.model_validate({"issuer": GOOGLE_ISSUER, "preset": "google", **fields})


@pytest.mark.parametrize(
    ("issuer", "preset", "own"),
    [
        (GOOGLE_ISSUER, "oidc", "google"),
        (GOOGLE_ISSUER, "okta", "google"),
        (GOOGLE_ISSUER, None, "google"),  # the default preset is oidc
        (GOOGLE_ISSUER + "/", "oidc", "google"),
        ("https://ACCOUNTS.google.com", "kubernetes", "google"),
        (GITHUB, "oidc", "github-actions"),
        (GITHUB, "google", "github-actions"),
        (GITHUB + "/octo-enterprise", "oidc", "github-actions"),  # an enterprise's issuer
    ],
)
def test_googles_and_githubs_issuers_take_their_own_preset(
    issuer: str, preset: str | None, own: str
) -> None:
    # Under oidc an `authenticated: true` role would admit every service account of every
    # project (every workflow of every repository), and Google's unverified emails with them.
    fields = {"issuer": issuer, "audience": GATEWAY}
    with pytest.raises(ValidationError, match=f"takes preset {own}"):
        Issuer.model_validate(fields if preset is None else {**fields, "preset": preset})
    Issuer.model_validate({**fields, "preset": own})


# --- github-actions ---------------------------------------------------------------------------------


async def test_a_github_actions_token() -> None:
    principal = await Verifier("github-actions", GITHUB).verify(github(), typ="JWT", x5t="x")
    assert principal.subject == "repo:octo-org/shop:environment:prod"
    assert principal.user_id == "octocat"
    for name in ("repository", "repository_owner", "ref", "environment", "workflow_ref"):
        assert principal.claim(name) == github()[name]


async def test_the_default_github_audience_is_refused_with_advice() -> None:
    gh = Verifier("github-actions", GITHUB)
    refusal = await gh.refusal(github(aud="https://github.com/octo-org"))
    assert refusal.code == "audience-mismatch"
    assert "core.getIDToken('https://spangate.example')" in str(refusal.detail)


def test_presets_name_no_scopes_groups_or_client_for_workloads() -> None:
    for preset in ("kubernetes", "google", "github-actions"):
        names = PRESETS[preset]
        assert (names.scopes, names.groups, names.client) == (None, None, None)
