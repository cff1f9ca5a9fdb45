"""Workload tokens end to end: the gateway (``build_gateway`` through httpx's ASGI transport) on
the real emulator, with one issuer of preset ``kubernetes``, ``google`` or ``github-actions``
pointed at the real local OpenID provider, whose workload clients (``dev/idp/clients.json``:
``shape``) issue tokens of exactly that shape: a projected service-account token, a Google ID
token, a GitHub Actions token. Each preset's acceptance and the refusals that matter: a token
for another audience, the API server's audience, an unverified email, a role that does not hold."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.dev.idp import IdpProcess, fetch_token
from gateway.runtime import build_gateway
from gateway.settings import Settings

GATEWAY = "https://spangate.test"  # the audience the workload clients mint tokens for

HEAD = """\
version: 1
spanner: {project: demo-project, instance: demo, database: shop}
audit:
  sinks: [{type: file, path: audit.jsonl}]
identities:
  reader: {database_role: shop_reader}
queries:
  get_order:
    identity: reader
    sql: SELECT OrderId, Status FROM Orders WHERE TenantId = 't1' AND OrderId = @order_id
    params:
      order_id: {type: STRING, max_length: 36}
  whoami:
    identity: reader
    sql: SELECT @one AS One, @two AS Two
    params:
      one: {type: STRING, from: claim.%(one)s}
      two: {type: STRING, from: claim.%(two)s}
routes:
  - {path: "/v1/orders/{order_id}", method: GET, query: get_order, allow: [callers]}
  - {path: /v1/whoami, method: GET, query: whoami, allow: [callers]}
issuers:
  w:
    issuer: ${IDP_ISSUER}
    audience: %(audience)s
    preset: %(preset)s
roles:
  callers:
"""

POLICIES = {
    "kubernetes": HEAD % {
        "one": "kubernetes.io.namespace",
        "two": "kubernetes.io.pod.name",
        "audience": GATEWAY,
        "preset": "kubernetes",
    }
    + "    - claims: {kubernetes.io.namespace: payments}\n",
    "google": HEAD % {
        "one": "email",
        "two": "sub",
        "audience": GATEWAY,
        "preset": "google",
    }
    + "    - claims: {email: deployer@shop-prod.iam.gserviceaccount.com}\n",
    "github-actions": HEAD % {
        "one": "repository",
        "two": "workflow_ref",
        "audience": GATEWAY,
        "preset": "github-actions",
    }
    + "    - claims: {repository: octo-org/shop, environment: prod, ref: refs/heads/main}\n",
}


class Workload:
    """A gateway serving one preset's policy, and tokens from the provider's workload clients."""

    def __init__(self, app: Gateway, idp: IdpProcess, personas: dict[str, Any], audit: Path):
        self.app = app
        self.idp = idp
        self.personas = personas
        self.audit = audit

    def token(self, client_id: str, audience: str = GATEWAY) -> str:
        secret = str(self.personas[client_id]["client_secret"])
        return fetch_token(self.idp.issuer, client_id, secret, resource=audience)

    async def get(self, path: str, token: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await http.get(path, headers={"Authorization": f"Bearer {token}"})

    def event(self, response: httpx.Response) -> dict[str, Any]:
        request_id = response.headers["x-request-id"]
        for line in self.audit.read_text().splitlines():
            payload: dict[str, Any] = json.loads(line)["protoPayload"]
            if payload["requestMetadata"]["requestAttributes"]["id"] == request_id:
                return payload
        raise AssertionError(f"no audit event for {request_id}")


@pytest.fixture
def workload(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    demo_database: str,
    idp: IdpProcess,
    personas: dict[str, Any],
    audit_key: str,
) -> Callable[[str], Any]:
    async def start(preset: str) -> AsyncIterator[Workload]:
        policy = tmp_path / f"{preset}.yaml"
        policy.write_text(POLICIES[preset])
        audit = tmp_path / f"{preset}-audit.jsonl"
        settings = Settings(
            policy=policy,
            spanner_emulator_host=demo_database,
            audit_path=audit,
            audit_key=audit_key,
        )
        app = build_gateway(settings, env={"IDP_ISSUER": idp.issuer})
        await app.startup()
        try:
            yield Workload(app, idp, personas, audit)
        finally:
            await app.shutdown()

    return start


@pytest.fixture
async def kubernetes(workload: Callable[[str], Any]) -> AsyncIterator[Workload]:
    async for w in workload("kubernetes"):
        yield w


@pytest.fixture
async def google(workload: Callable[[str], Any]) -> AsyncIterator[Workload]:
    async for w in workload("google"):
        yield w


@pytest.fixture
async def github(workload: Callable[[str], Any]) -> AsyncIterator[Workload]:
    async for w in workload("github-actions"):
        yield w


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code, body
    return str(body["detail"])


async def test_a_projected_service_account_token(kubernetes: Workload) -> None:
    token = kubernetes.token("k8s-payments-api")
    orders = await kubernetes.get("/v1/orders/O-1001", token)
    assert orders.status_code == 200, orders.text
    assert orders.json()["rows"] == [{"OrderId": "O-1001", "Status": "PAID"}]
    who = await kubernetes.get("/v1/whoami", token)
    assert who.json()["rows"] == [{"One": "payments", "Two": "api-6d9f7c-x2x4z"}]
    event = kubernetes.event(orders)
    assert event["authenticationInfo"]["principalSubject"] == "system:serviceaccount:payments:api"
    assert event["metadata"]["decision"]["rule"] == "callers"


async def test_kubernetes_refusals(kubernetes: Workload) -> None:
    default = kubernetes.token(
        "k8s-payments-api", audience="https://kubernetes.default.svc.cluster.local"
    )
    response = await kubernetes.get("/v1/orders/O-1001", default)
    detail = refused(response, 401, "api-server-token")
    assert "projected service-account token with audience https://spangate.test" in detail
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert kubernetes.event(response)["status"]["message"]  # audited, refused
    other_namespace = kubernetes.token("k8s-billing-worker")
    refused(await kubernetes.get("/v1/orders/O-1001", other_namespace), 403, "no-allow-role")


async def test_a_google_id_token(google: Workload) -> None:
    token = google.token("google-deployer")
    orders = await google.get("/v1/orders/O-1001", token)
    assert orders.status_code == 200, orders.text
    who = await google.get("/v1/whoami", token)
    assert who.json()["rows"] == [
        {"One": "deployer@shop-prod.iam.gserviceaccount.com", "Two": "108562830391273012345"}
    ]
    authn = google.event(orders)["authenticationInfo"]
    assert authn["principalSubject"] == "deployer@shop-prod.iam.gserviceaccount.com"


async def test_google_refusals(google: Workload) -> None:
    elsewhere = google.token("google-deployer", audience="https://other.example")
    detail = refused(await google.get("/v1/orders/O-1001", elsewhere), 401, "audience-mismatch")
    assert "--audiences=https://spangate.test" in detail
    unverified = google.token("google-unverified")
    refused(await google.get("/v1/orders/O-1001", unverified), 401, "email-unverified")


async def test_a_github_actions_token(github: Workload) -> None:
    token = github.token("github-deploy")
    orders = await github.get("/v1/orders/O-1001", token)
    assert orders.status_code == 200, orders.text
    who = await github.get("/v1/whoami", token)
    assert who.json()["rows"] == [
        {
            "One": "octo-org/shop",
            "Two": "octo-org/shop/.github/workflows/deploy.yml@refs/heads/main",
        }
    ]
    authn = github.event(orders)["authenticationInfo"]
    assert authn["principalSubject"] == "repo:octo-org/shop:environment:prod"
    assert authn["thirdPartyPrincipal"]["userId"] == "octocat"


async def test_github_refusals(github: Workload) -> None:
    default = github.token("github-deploy", audience="https://github.com/octo-org")
    detail = refused(await github.get("/v1/orders/O-1001", default), 401, "audience-mismatch")
    assert "core.getIDToken('https://spangate.test')" in detail
