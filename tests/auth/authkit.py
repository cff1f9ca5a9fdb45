"""Helpers for the auth unit tests: real keys, a clock the test moves, and an IdP served through
httpx.MockTransport (the injected transport seam; nothing is patched)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.policy.model import Issuer

ISSUER = "https://idp.example/oauth2/default"
AUDIENCE = "api://shop"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Key:
    kid: str
    alg: str
    private: Any
    public_jwk: dict[str, Any]

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, **header: Any) -> str:
        headers = {"kid": self.kid, **header}
        if headers.get("kid") is None:
            headers.pop("kid")
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)


def rsa_key(kid: str, alg: str = "RS256", *, declare_alg: bool = True) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig")
    if declare_alg:
        jwk["alg"] = alg
    return Key(kid, alg, private, jwk)


def ec_key(kid: str, alg: str = "ES256") -> Key:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
    private = ec.generate_private_key(curve)
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg=alg)
    return Key(kid, alg, private, jwk)


def ed_key(kid: str) -> Key:
    private = ed25519.Ed25519PrivateKey.generate()
    jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg="EdDSA")
    return Key(kid, "EdDSA", private, jwk)


def claims(issuer: str = ISSUER, now: float | None = None, **extra: Any) -> dict[str, Any]:
    t = int(time.time() if now is None else now)
    base: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": t,
        "exp": t + 300,
        "cid": "client-1",
        "scp": ["orders.read"],
        "groups": ["support"],
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def issuer_config(issuer: str = ISSUER, **fields: Any) -> Issuer:
    return Issuer.model_validate({"issuer": issuer, "audience": AUDIENCE, **fields})


@dataclass
class FakeIdp:
    """One authorization server: discovery, JWKS and introspection at ``issuer``'s URLs."""

    issuer: str = ISSUER
    keys: list[Key] = field(default_factory=list)
    up: bool = True
    cache_control: str | None = None
    discovery: str = "openid-configuration"  # or "oauth-authorization-server", "rfc8414"
    meta_issuer: str | None = None  # what discovery claims (default: issuer)
    introspection_endpoint: bool = True
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> RFC 7662 answer
    introspect_status: int = 200
    introspect_error: str = "invalid_client"
    requests: list[httpx.Request] = field(default_factory=list)
    jwks_fetches: int = 0
    introspections: int = 0
    on_request: Callable[[httpx.Request], None] | None = None

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/v1/keys"

    @property
    def introspection_uri(self) -> str:
        return self.issuer + "/v1/introspect"

    def metadata_url(self) -> str:
        if self.discovery == "rfc8414":
            scheme, rest = self.issuer.split("://", 1)
            host, _, path = rest.partition("/")
            return f"{scheme}://{host}/.well-known/oauth-authorization-server/{path}"
        return f"{self.issuer}/.well-known/{self.discovery}"

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        url = str(request.url)
        if url == self.metadata_url():
            meta: dict[str, Any] = {
                "issuer": self.meta_issuer or self.issuer,
                "jwks_uri": self.jwks_uri,
            }
            if self.introspection_endpoint:
                meta["introspection_endpoint"] = self.introspection_uri
            return httpx.Response(200, json=meta)
        if url == self.jwks_uri:
            self.jwks_fetches += 1
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            return httpx.Response(
                200, json={"keys": [k.public_jwk for k in self.keys]}, headers=headers
            )
        if url == self.introspection_uri and request.method == "POST":
            self.introspections += 1
            if self.introspect_status != 200:
                return httpx.Response(self.introspect_status, json={"error": self.introspect_error})
            form = parse_qs(request.content.decode())
            token = form.get("token", [""])[0]
            return httpx.Response(200, json=self.answers.get(token, {"active": False}))
        return httpx.Response(404, json={"error": "not_found"})


def client_for(*idps: FakeIdp) -> httpx.AsyncClient:
    """An AsyncClient whose transport routes each request to the FakeIdp that owns its host."""

    def route(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        owners = [i for i in idps if url == i.metadata_url()] or sorted(
            (i for i in idps if url.startswith(i.issuer)), key=lambda i: -len(i.issuer)
        )
        return owners[0].handler(request) if owners else httpx.Response(404)

    return httpx.AsyncClient(transport=httpx.MockTransport(route))
