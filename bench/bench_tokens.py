"""Token verification: spangate's TokenVerifier beside pyjwt alone and raw ``cryptography``.

One thread, warm keys (the JWKS is served once through httpx.MockTransport and cached), fresh
2048-bit RSA and P-256 keys. Rows:

- ``cryptography`` signature checks alone (the floor: RSA PKCS#1 v1.5 / ECDSA over SHA-256);
- pyjwt ``decode`` with a fixed key, pinned algorithm and the same claim checks;
- ``TokenVerifier.verify`` uncached (every token distinct: parse, issuer, alg/typ/kid checks, key
  lookup, pyjwt, claim checks, Principal), for RS256 and ES256;
- ``TokenVerifier.verify`` cached (the same token again: a SHA-256 and a dictionary lookup).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bench.table import Row, Table
from gateway.auth.jwks import JwksCache
from gateway.auth.verify import TokenVerifier
from gateway.policy.model import Issuer

__all__ = ["run"]

ISSUER = "https://idp.bench/oauth2/default"
AUDIENCE = "api://shop"


def _keys() -> tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dict[str, Any]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r", "alg": "RS256"},
            {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e", "alg": "ES256"},
        ]
    }
    return rsa_key, ec_key, jwks


def _claims(i: int) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"user-{i}",
        "iat": now,
        "exp": now + 3600,
        "cid": "bench",
        "scp": ["orders.read"],
        "groups": ["support"],
        "tenant": "t1",
    }


def _timed(name: str, calls: list[Any], note: str = "") -> Row:
    latencies = []
    started = time.perf_counter()
    for call in calls:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    return Row.from_latencies(name, latencies, time.perf_counter() - started, note)


async def _timed_async(name: str, verifier: TokenVerifier, tokens: list[str], note: str) -> Row:
    latencies = []
    started = time.perf_counter()
    for token in tokens:
        t0 = time.perf_counter()
        await verifier.verify(token)
        latencies.append(time.perf_counter() - t0)
    return Row.from_latencies(name, latencies, time.perf_counter() - started, note)


def _raw_rows(n: int, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> list[Row]:
    data = [f"header.payload-{i}".encode() for i in range(n)]
    rsa_pub, ec_pub = rsa_key.public_key(), ec_key.public_key()
    rsa_sigs = [rsa_key.sign(d, padding.PKCS1v15(), hashes.SHA256()) for d in data]
    ec_sigs = [ec_key.sign(d, ec.ECDSA(hashes.SHA256())) for d in data]
    return [
        _timed(
            "cryptography RS256 signature",
            [
                (lambda d=d, s=s: rsa_pub.verify(s, d, padding.PKCS1v15(), hashes.SHA256()))
                for d, s in zip(data, rsa_sigs, strict=True)
            ],
            "the floor",
        ),
        _timed(
            "cryptography ES256 signature",
            [
                (lambda d=d, s=s: ec_pub.verify(s, d, ec.ECDSA(hashes.SHA256())))
                for d, s in zip(data, ec_sigs, strict=True)
            ],
        ),
    ]


def _pyjwt_rows(n: int, tokens: dict[str, list[str]], keys: dict[str, Any]) -> list[Row]:
    rows = []
    for alg in ("RS256", "ES256"):
        key = keys[alg]
        rows.append(
            _timed(
                f"pyjwt {alg}, fixed key",
                [
                    (
                        lambda t=t, key=key, alg=alg: jwt.decode(
                            t,
                            key,
                            algorithms=[alg],
                            audience=AUDIENCE,
                            issuer=ISSUER,
                            options={"require": ["exp", "iss", "aud", "sub"]},
                        )
                    )
                    for t in tokens[alg][:n]
                ],
            )
        )
    return rows


async def _verifier_rows(n: int, tokens: dict[str, list[str]], jwks: dict[str, Any]) -> list[Row]:
    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=jwks)

    issuer = Issuer.model_validate({"issuer": ISSUER, "audience": AUDIENCE, "preset": "okta"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client:
        cache = JwksCache(name="okta", issuer=ISSUER, client=client, jwks_uri=ISSUER + "/keys")
        await cache.start()
        uncached = TokenVerifier({"okta": issuer}, {"okta": cache}, cache_size=0)
        cached = TokenVerifier({"okta": issuer}, {"okta": cache})
        rows = [
            await _timed_async(
                f"spangate {alg}, uncached", uncached, tokens[alg][:n], "every token new"
            )
            for alg in ("RS256", "ES256")
        ]
        one = tokens["RS256"][0]
        await cached.verify(one)
        rows.append(await _timed_async("spangate, cached", cached, [one] * n, "the same token"))
        assert cache.fetches == 1
    return rows


def run(quick: bool) -> Table:
    n = 300 if quick else 3000
    rsa_key, ec_key, jwks = _keys()
    tokens = {
        "RS256": [
            jwt.encode(_claims(i), rsa_key, algorithm="RS256", headers={"kid": "r"})
            for i in range(n)
        ],
        "ES256": [
            jwt.encode(_claims(i), ec_key, algorithm="ES256", headers={"kid": "e"})
            for i in range(n)
        ],
    }
    table = Table("Token verification, one thread (verifications/s; ratio to raw RS256)")
    for row in _raw_rows(n, rsa_key, ec_key):
        table.add(row)
    for row in _pyjwt_rows(
        n, tokens, {"RS256": rsa_key.public_key(), "ES256": ec_key.public_key()}
    ):
        table.add(row)
    for row in asyncio.run(_verifier_rows(n, tokens, jwks)):
        table.add(row)
    return table
