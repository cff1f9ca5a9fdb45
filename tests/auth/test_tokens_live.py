"""Token validation end to end: the real app, the real OpenID provider, the real emulator.

Tests that stop or restart a provider start their own (on a free port) and their own gateway,
so the session's provider is never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from gateway.app import Gateway
from gateway.dev.idp import (
    ID_TOKEN_TYPE,
    OPAQUE_RESOURCE,
    IdpProcess,
    exchange_token,
    fetch_token,
    revoke_token,
    start_idp,
)
from gateway.dev.keys import write_signing_keys
from gateway.dev.ports import free_port
from gateway.runtime import build_gateway
from gateway.settings import Settings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
POLICY = HERE / "data" / "tokens.policy.yaml"
IDP_DIR = REPO / "dev" / "idp"
SECRETS = {
    "support-console": "support-console-secret",
    "order-agent": "order-agent-secret",
    "order-writer": "order-writer-secret",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    if status == 401:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="spangate", error="invalid_token"')
    return body


def token(idp: IdpProcess, client: str, **kwargs: Any) -> str:
    return fetch_token(idp.issuer, client, SECRETS[client], **kwargs)


def private_key(keys_path: Path, kty: str) -> tuple[str, Any]:
    for jwk in json.loads(keys_path.read_text())["keys"]:
        if jwk["kty"] == kty:
            return jwk["kid"], jwt.PyJWK(jwk).key
    raise AssertionError(kty)


def minted(keys_path: Path, iss: str, **extra: Any) -> str:
    kid, key = private_key(keys_path, "RSA")
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": "api://shop",
        "sub": "minted",
        "iat": now,
        "exp": now + 300,
        "groups": ["support"],
        "tenant": "t1",
        **extra,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@asynccontextmanager
async def gateway_for(
    issuer: str,
    demo_database: str,
    audit: Path,
    *,
    idp_client: httpx.AsyncClient | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    origin = issuer.removesuffix("/oauth2/default")
    env = {
        "ISSUER": issuer,
        "ORG_ISSUER": origin,
        "ORG_ONLY_ISSUER": origin.replace("127.0.0.1", "localhost"),
    }
    options: dict[str, Any] = {"jwks_min_refetch_seconds": 1.0, "introspection_cache_seconds": 0}
    options.update(settings)
    app = build_gateway(
        Settings(policy=POLICY, spanner_emulator_host=demo_database, audit_path=audit, **options),
        env=env,
        http=idp_client,
    )
    await app.startup()
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            yield app, http
    finally:
        await app.shutdown()


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokens") / "audit.jsonl"


@pytest.fixture(scope="module")
async def live(
    idp: IdpProcess, demo_database: str, audit_file: Path
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with gateway_for(idp.issuer, demo_database, audit_file) as pair:
        yield pair


@pytest.fixture
def http(live: tuple[Gateway, httpx.AsyncClient]) -> httpx.AsyncClient:
    return live[1]


def audit_for(audit_file: Path, request_id: str) -> dict[str, Any]:
    """The audit event of one request (found by its id, wherever the format keeps it)."""
    for line in audit_file.read_text().splitlines():
        if request_id in line:
            event: dict[str, Any] = json.loads(line)
            return event
    raise AssertionError(f"no audit event for {request_id}")


# -- RS256, ES256, opaque ---------------------------------------------------------------------


async def test_rs256_and_es256_tokens(http: httpx.AsyncClient, idp: IdpProcess) -> None:
    rs = token(idp, "support-console")
    assert jwt.get_unverified_header(rs)["alg"] == "RS256"
    assert (await http.get("/v1/orders/O-1001", headers=bearer(rs))).status_code == 200
    es = exchange_token(idp.issuer, "order-agent", SECRETS["order-agent"], rs)
    assert jwt.get_unverified_header(es)["alg"] == "ES256"
    assert (await http.get("/v1/agent/orders/O-1001", headers=bearer(es))).status_code == 200


async def test_opaque_token_through_introspection_then_revoked(
    http: httpx.AsyncClient, idp: IdpProcess, live: tuple[Gateway, httpx.AsyncClient]
) -> None:
    opaque = token(idp, "support-console", resource=OPAQUE_RESOURCE)
    assert opaque.count(".") == 0
    ok = await http.get("/v1/orders/O-1001", headers=bearer(opaque))
    assert ok.status_code == 200, ok.text
    assert ok.json()["rows"][0]["OrderId"] == "O-1001"
    revoke_token(idp.issuer, "support-console", SECRETS["support-console"], opaque)
    body = problem(
        await http.get("/v1/orders/O-1001", headers=bearer(opaque)), 401, "token-inactive"
    )
    assert "not active" in body["detail"]
    state = live[0].verifier.introspectors["okta"].state()
    assert state.endpoint == f"{idp.issuer}/v1/introspect" and state.calls >= 2


async def test_unknown_opaque_token_is_inactive(http: httpx.AsyncClient) -> None:
    problem(
        await http.get("/v1/orders/O-1001", headers=bearer(secrets.token_urlsafe(32))),
        401,
        "token-inactive",
    )


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting the requests per path (what the IdP is asked)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths[request.url.path] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_flood_of_random_opaque_tokens_makes_bounded_idp_calls(
    idp: IdpProcess, demo_database: str, tmp_path: Path
) -> None:
    counting = CountingTransport()
    rate, burst = 2.0, 5
    async with (
        httpx.AsyncClient(transport=counting, timeout=5) as idp_client,
        gateway_for(
            idp.issuer,
            demo_database,
            tmp_path / "flood.jsonl",
            idp_client=idp_client,
            introspection_cache_seconds=60,
            introspection_rate=rate,
            introspection_burst=burst,
            introspection_concurrency=4,
        ) as (app, http),
    ):
        good = token(idp, "support-console", resource=OPAQUE_RESOURCE)
        first = await http.get("/v1/orders/O-1001", headers=bearer(good))
        assert first.status_code == 200, first.text
        introspect_path = urlsplit(f"{idp.issuer}/v1/introspect").path
        before = counting.paths[introspect_path]
        okta = app.verifier.introspectors["okta"]
        hits = okta.cache_hits

        # strings that cannot be a token of the provider: refused before any call
        junk = [secrets.token_urlsafe(16), secrets.token_urlsafe(64), "~" * 43]
        for value in junk:
            problem(await http.get("/v1/orders/O-1001", headers=bearer(value)), 401, "token-malformed")
        assert counting.paths[introspect_path] == before

        started = time.monotonic()
        flood = [secrets.token_urlsafe(32) for _ in range(300)]
        answers = await asyncio.gather(
            *(http.get("/v1/orders/O-1001", headers=bearer(t)) for t in flood),
            *(http.get("/v1/orders/O-1001", headers=bearer(good)) for _ in range(20)),
        )
        elapsed = time.monotonic() - started
        flooded, legitimate = answers[:300], answers[300:]
        codes = Counter(a.json()["code"] for a in flooded)
        assert set(codes) <= {"token-inactive", "introspection-busy"}, codes
        assert codes["introspection-busy"] > 0
        busy = next(a for a in flooded if a.json()["code"] == "introspection-busy")
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert [a.status_code for a in legitimate] == [200] * 20  # served from the cache
        assert okta.cache_hits - hits == 20
        # two introspecting issuers (okta, org), each with its own budget
        calls = counting.paths[introspect_path] - before
        assert calls <= 2 * (burst + rate * elapsed + 1), (calls, elapsed)

        body = (await http.get("/readyz")).json()
        ready = body["issuers"]["okta"]["introspection"]
        # junk that fits no issuer is counted once, not per issuer (okta and org here)
        assert ready["refused"]["rate"] > 0 and ready["refused"]["format"] == 0
        assert body["opaque_tokens_refused"] == len(junk)
        assert ready["cached_active"] == 1 and ready["cached_inactive"] >= 1
        metrics = (await http.get("/metrics")).text.splitlines()
        assert 'spangate_introspection_calls_total{issuer="okta",result="active"} 1.0' in metrics
        refused = f'spangate_introspection_refused_total{{issuer="",reason="format"}} {len(junk)}.0'
        assert refused in metrics
        assert 'spangate_introspection_refused_total{issuer="org",reason="format"} 0.0' in metrics


# -- delegation (RFC 8693 act) ------------------------------------------------------------------


async def test_act_reaches_roles_binding_and_audit(
    http: httpx.AsyncClient, idp: IdpProcess, audit_file: Path
) -> None:
    user = token(idp, "support-console")
    delegated = exchange_token(
        idp.issuer, "order-agent", SECRETS["order-agent"], user, scope="orders.read"
    )
    assert jwt.decode(delegated, options={"verify_signature": False})["act"] == {
        "sub": "order-agent"
    }
    who = await http.get("/v1/agent/whoami", headers=bearer(delegated))
    assert who.status_code == 200, who.text
    assert who.json()["rows"] == [{"actor": "order-agent", "user": "support-console"}]
    event = audit_for(audit_file, who.headers["x-request-id"])["protoPayload"]
    authn = event["authenticationInfo"]
    assert authn["principalSubject"] == "support-console"
    assert authn["serviceAccountDelegationInfo"] == [{"principalSubject": "order-agent"}]
    assert "delegated-agent" in event["metadata"]["decision"]["roles"]
    # the user's own token holds no delegation; the agent's token may not use the user's path
    problem(await http.get("/v1/agent/orders/O-1001", headers=bearer(user)), 403, "no-allow-role")
    problem(await http.get("/v1/orders/O-1001", headers=bearer(delegated)), 403, "denied-by-role")


async def test_act_of_an_opaque_exchanged_token(http: httpx.AsyncClient, idp: IdpProcess) -> None:
    user = token(idp, "support-console", resource=OPAQUE_RESOURCE)
    delegated = exchange_token(
        idp.issuer, "order-agent", SECRETS["order-agent"], user, resource=OPAQUE_RESOURCE
    )
    who = await http.get("/v1/agent/whoami", headers=bearer(delegated))
    assert who.status_code == 200, who.text
    assert who.json()["rows"] == [{"actor": "order-agent", "user": "support-console"}]


async def test_a_flat_act_sub_claim_is_no_actor(
    http: httpx.AsyncClient, idp: IdpProcess, idp_keys: Path, audit_file: Path
) -> None:
    # A token signed by the provider with a flat claim literally named "act.sub": it must neither
    # hold the role that names the actor (claims: {act.sub: ...}) nor bind from: claim.act.sub,
    # and the audit trail rightly shows no delegation.
    flat = minted(idp_keys, idp.issuer, sub="user-9", **{"act.sub": "order-agent"})
    who = await http.get("/v1/agent/whoami", headers=bearer(flat))
    problem(who, 403, "no-allow-role")
    event = audit_for(audit_file, who.headers["x-request-id"])["protoPayload"]
    assert event["authenticationInfo"]["serviceAccountDelegationInfo"] == []
    assert event["metadata"]["decision"]["roles"] == ["support"]
    # the deny role that names the actor does not hold either: a support person's direct token
    order = await http.get("/v1/orders/O-1001", headers=bearer(flat))
    assert order.status_code == 200, order.text
    # a nested act without sub beside the flat claim: delegated, but no actor to bind or match
    half = minted(idp_keys, idp.issuer, act={"client_id": "x"}, **{"act.sub": "order-agent"})
    problem(await http.get("/v1/agent/whoami", headers=bearer(half)), 403, "no-allow-role")


async def test_an_act_that_is_no_object_is_refused(
    http: httpx.AsyncClient, idp: IdpProcess, idp_keys: Path
) -> None:
    token = minted(idp_keys, idp.issuer, act="order-agent")
    body = problem(await http.get("/v1/orders/O-1001", headers=bearer(token)), 401, "token-malformed")
    assert "act claim" in body["detail"]


# -- ID tokens, org servers, attacks ----------------------------------------------------------


async def test_an_id_token_is_not_an_access_token(http: httpx.AsyncClient, idp: IdpProcess) -> None:
    user = token(idp, "support-console")
    id_token = exchange_token(
        idp.issuer,
        "support-console",
        SECRETS["support-console"],
        user,
        requested_token_type=ID_TOKEN_TYPE,
    )
    assert jwt.decode(id_token, options={"verify_signature": False})["aud"] == "support-console"
    body = problem(
        await http.get("/v1/orders/O-1001", headers=bearer(id_token)), 401, "token-malformed"
    )
    assert "ID token" in body["detail"]


async def test_okta_org_server_tokens(
    http: httpx.AsyncClient,
    idp: IdpProcess,
    idp_keys: Path,
    live: tuple[Gateway, httpx.AsyncClient],
) -> None:
    origin = idp.issuer.removesuffix("/oauth2/default")
    calls = live[0].verifier.introspectors["org"].calls
    # introspected, not validated locally: the provider does not know this token
    problem(
        await http.get("/v1/orders/O-1001", headers=bearer(minted(idp_keys, origin))),
        401,
        "token-inactive",
    )
    assert live[0].verifier.introspectors["org"].calls == calls + 1
    only = origin.replace("127.0.0.1", "localhost")
    body = problem(
        await http.get("/v1/orders/O-1001", headers=bearer(minted(idp_keys, only))),
        401,
        "org-server-token",
    )
    assert "custom authorization server" in body["detail"]


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        ("jwk-header", "key-unknown"),
        ("jku-header", "key-unknown"),
        ("x5u-header", "key-unknown"),
        ("x5c-header", "key-unknown"),
        ("unknown-crit", "token-malformed"),
        ("rsa-alg-on-ec-kid", "algorithm-not-allowed"),
        ("ps256", "algorithm-not-allowed"),
        ("typ-id-token", "token-malformed"),
        ("too-large", "token-malformed"),
        ("issuer-with-slash", "issuer-unknown"),
    ],
)
async def test_attacks_are_refused(
    http: httpx.AsyncClient, idp: IdpProcess, idp_keys: Path, attack: str, code: str
) -> None:
    kid, key = private_key(idp_keys, "RSA")
    ec_kid, _ = private_key(idp_keys, "EC")
    attacker_keys = idp_keys.parent / "attacker.json"
    if not attacker_keys.exists():
        write_signing_keys(attacker_keys)
    attacker_kid, attacker = private_key(attacker_keys, "RSA")
    attacker_jwk = next(
        {k: v for k, v in j.items() if k in ("kty", "n", "e", "kid")}
        for j in json.loads(attacker_keys.read_text())["keys"]
        if j["kty"] == "RSA"
    )
    now = int(time.time())
    claims = {
        "iss": idp.issuer,
        "aud": "api://shop",
        "sub": "mallory",
        "iat": now,
        "exp": now + 300,
        "groups": ["support"],
        "tenant": "t1",
    }
    made = {
        "jwk-header": lambda: jwt.encode(
            claims, attacker, "RS256", headers={"kid": attacker_kid, "jwk": attacker_jwk}
        ),
        "jku-header": lambda: jwt.encode(
            claims, attacker, "RS256", headers={"kid": attacker_kid, "jku": "https://evil.test/k"}
        ),
        "x5u-header": lambda: jwt.encode(
            claims, attacker, "RS256", headers={"kid": attacker_kid, "x5u": "https://evil.test/c"}
        ),
        "x5c-header": lambda: jwt.encode(
            claims, attacker, "RS256", headers={"kid": attacker_kid, "x5c": ["MIIB"]}
        ),
        "unknown-crit": lambda: jwt.encode(
            claims, key, "RS256", headers={"kid": kid, "crit": ["exp-ext"], "exp-ext": 1}
        ),
        "rsa-alg-on-ec-kid": lambda: jwt.encode(claims, key, "RS256", headers={"kid": ec_kid}),
        "ps256": lambda: jwt.encode(claims, key, "PS256", headers={"kid": kid}),
        "typ-id-token": lambda: jwt.encode(
            claims, key, "RS256", headers={"kid": kid, "typ": "id_token+jwt"}
        ),
        "too-large": lambda: jwt.encode(
            {**claims, "pad": "x" * 20_000}, key, "RS256", headers={"kid": kid}
        ),
        "issuer-with-slash": lambda: jwt.encode(
            {**claims, "iss": idp.issuer + "/"}, key, "RS256", headers={"kid": kid}
        ),
    }
    control = jwt.encode(claims, key, "RS256", headers={"kid": kid})
    assert (await http.get("/v1/orders/O-1001", headers=bearer(control))).status_code == 200
    problem(await http.get("/v1/orders/O-1001", headers=bearer(made[attack]())), 401, code)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_time_beyond_float_range_is_malformed(
    http: httpx.AsyncClient, idp: IdpProcess, idp_keys: Path, claim: str
) -> None:
    huge = minted(idp_keys, idp.issuer, **{claim: 10**400})  # valid JSON, no float value
    body = problem(await http.get("/v1/orders/O-1001", headers=bearer(huge)), 401, "token-malformed")
    assert claim in body["detail"]


async def test_a_sender_constrained_token_is_refused(
    http: httpx.AsyncClient, idp: IdpProcess, idp_keys: Path
) -> None:
    bound = minted(idp_keys, idp.issuer, cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
    body = problem(
        await http.get("/v1/orders/O-1001", headers=bearer(bound)), 401, "token-sender-constrained"
    )
    assert "DPoP" in body["detail"]
    dpop = await http.get("/v1/orders/O-1001", headers={"Authorization": f"DPoP {bound}"})
    problem(dpop, 401, "token-sender-constrained")


# -- key rotation and IdP outages (their own provider and gateway) -------------------------------


@pytest.fixture
def own_keys(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    def make(name: str) -> Path:
        path = tmp_path / f"{name}.json"
        write_signing_keys(path)
        return path

    yield make


def restart(idp: IdpProcess, keys: Path) -> IdpProcess:
    port = idp.port
    idp.stop()
    return start_idp(idp_dir=IDP_DIR, keys_path=keys, port=port)


async def test_key_rotation_without_a_restart_and_a_flood_of_unknown_kids(
    demo_database: str, tmp_path: Path, own_keys: Callable[[str], Path]
) -> None:
    first_keys, rotated_keys = own_keys("first"), own_keys("rotated")
    provider = start_idp(idp_dir=IDP_DIR, keys_path=first_keys)
    try:
        async with gateway_for(
            provider.issuer, demo_database, tmp_path / "a.jsonl", jwks_min_refetch_seconds=1.0
        ) as (app, http):
            cache = app.verifier.caches["okta"]
            old = token(provider, "support-console")
            assert (await http.get("/v1/orders/O-1001", headers=bearer(old))).status_code == 200
            provider = restart(provider, rotated_keys)  # same issuer, new keys
            await asyncio.sleep(1.0)  # the rate limit of key refetches
            new = token(provider, "support-console")
            assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
            ok = await http.get("/v1/orders/O-1001", headers=bearer(new))
            assert ok.status_code == 200, ok.text
            # the old key is gone: a token it signs now is refused (one verified earlier stays
            # cached until its exp)
            unseen_old = minted(first_keys, provider.issuer)
            problem(
                await http.get("/v1/orders/O-1001", headers=bearer(unseen_old)), 401, "key-unknown"
            )

            _, key = private_key(rotated_keys, "RSA")
            claims = jwt.decode(new, options={"verify_signature": False})
            await asyncio.sleep(1.0)  # the next interval: the flood may cause one fetch, no more
            before, started = cache.fetches, time.monotonic()
            flood = [
                jwt.encode(claims, key, "RS256", headers={"kid": secrets.token_hex(8)})
                for _ in range(300)
            ]
            answers = await asyncio.gather(
                *(http.get("/v1/orders/O-1001", headers=bearer(t)) for t in flood)
            )
            elapsed = time.monotonic() - started
            assert {a.json()["code"] for a in answers} == {"key-unknown"}
            assert 1 <= cache.fetches - before <= 1 + int(elapsed / 1.0)
    finally:
        provider.stop()


async def test_idp_down_with_warm_keys_still_serves(
    demo_database: str, tmp_path: Path, own_keys: Callable[[str], Path]
) -> None:
    keys = own_keys("warm")
    provider = start_idp(idp_dir=IDP_DIR, keys_path=keys)
    try:
        async with gateway_for(provider.issuer, demo_database, tmp_path / "w.jsonl") as (_, http):
            used, unused = token(provider, "support-console"), token(provider, "support-console")
            assert (await http.get("/v1/orders/O-1001", headers=bearer(used))).status_code == 200
            provider.stop()
            # a token never seen before, signed with a cached key: verified without the IdP
            ok = await http.get("/v1/orders/O-1001", headers=bearer(unused))
            assert ok.status_code == 200, ok.text
            await asyncio.sleep(1.0)
            unknown = jwt.encode(
                jwt.decode(unused, options={"verify_signature": False}),
                private_key(keys, "RSA")[1],
                "RS256",
                headers={"kid": "nope"},
            )
            problem(
                await http.get("/v1/orders/O-1001", headers=bearer(unknown)), 401, "key-unknown"
            )  # the token's fault, not the IdP's: still 401
            ready = (await http.get("/readyz")).json()["issuers"]["okta"]
            assert ready["ready"] is True and ready["keys"] == 2
            assert "ConnectError" in ready["last_error"]
    finally:
        provider.stop()


async def test_idp_down_on_a_cold_start_is_503_then_recovers(
    demo_database: str, tmp_path: Path, own_keys: Callable[[str], Path]
) -> None:
    keys = own_keys("cold")
    provider = start_idp(idp_dir=IDP_DIR, keys_path=keys)
    port, user = provider.port, token(provider, "support-console")
    provider.stop()
    try:
        async with gateway_for(provider.issuer, demo_database, tmp_path / "c.jsonl") as (_, http):
            down = await http.get("/v1/orders/O-1001", headers=bearer(user))
            assert down.status_code == 503
            assert down.json()["code"] == "idp-unavailable"
            assert int(down.headers["retry-after"]) >= 1
            assert "www-authenticate" not in down.headers
            readyz = await http.get("/readyz")
            assert readyz.status_code == 503
            state = readyz.json()["issuers"]["okta"]
            assert state["ready"] is False and state["keys"] == 0 and state["last_error"]
            assert readyz.json()["issuers"]["org"]["local_keys"] is False
            provider = start_idp(idp_dir=IDP_DIR, keys_path=keys, port=port)
            await asyncio.sleep(1.0)
            ok = await http.get("/v1/orders/O-1001", headers=bearer(user))
            assert ok.status_code == 200, ok.text
            assert (await http.get("/readyz")).json()["issuers"]["okta"]["ready"] is True
    finally:
        provider.stop()


def test_readiness_follows_the_idp_after_a_cold_start_without_any_token(
    demo_database: str, tmp_path: Path, own_keys: Callable[[str], Path]
) -> None:
    """A real `spangate serve` started while its issuer does not answer (a Kubernetes pod whose
    readiness probe keeps traffic away): /readyz turns 200 once the issuer is back, with no
    token ever sent."""
    keys = own_keys("readyz")
    provider = start_idp(idp_dir=IDP_DIR, keys_path=keys)
    port = provider.port
    provider.stop()  # the gateway starts while nothing answers on the issuer's port
    origin = provider.issuer.removesuffix("/oauth2/default")
    gateway_port = free_port()
    env = {
        **os.environ,
        "SPANGATE_DRAIN_SECONDS": "0",  # stopped without a drain (tests/served.py)
        "ISSUER": provider.issuer,
        "ORG_ISSUER": origin,
        "ORG_ONLY_ISSUER": origin.replace("127.0.0.1", "localhost"),
        "SPANNER_EMULATOR_HOST": demo_database,
        "SPANGATE_AUDIT_PATH": str(tmp_path / "serve.jsonl"),
        "SPANGATE_JWKS_RETRY_MAX_SECONDS": "2",
        "SPANGATE_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "gateway", "serve", "--policy", str(POLICY)]
    server = subprocess.Popen(
        [*command, "--port", str(gateway_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    readyz = f"http://127.0.0.1:{gateway_port}/readyz"

    def status() -> httpx.Response | None:
        assert server.poll() is None, "spangate serve exited"
        try:
            return httpx.get(readyz, timeout=5)
        except httpx.TransportError:
            return None

    try:
        deadline = time.monotonic() + 60  # generous: the start-up warms Spanner sessions
        while (answer := status()) is None or answer.json().get("databases_warmed") is not True:
            assert time.monotonic() < deadline, "spangate serve never finished starting"
            time.sleep(0.2)
        assert answer.status_code == 503
        assert answer.json()["issuers"]["okta"]["keys"] == 0
        provider = start_idp(idp_dir=IDP_DIR, keys_path=keys, port=port)
        deadline = time.monotonic() + 60  # generous: retries are at most ~2 s apart
        while (answer := status()) is None or answer.status_code != 200:
            assert time.monotonic() < deadline, answer.text if answer else "no answer"
            time.sleep(0.25)
        state = answer.json()["issuers"]["okta"]
        assert state["ready"] is True and state["keys"] == 2 and state["last_error"] is None
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        provider.stop()
