"""Bearer token -> Principal, or an AuthError with a stable code.

The token's ``iss`` (read before the signature is checked, used only to pick the issuer) must equal
one configured issuer exactly; that issuer's pinned algorithms, audiences and keys then decide.
pyjwt verifies with ``algorithms`` pinned, ``iss``/``aud``/``exp``/``sub`` required, and ``nbf``/``iat``
honoured with the configured leeway. Keys come only from the issuer's JWKS (never from ``jku``,
``x5u``, ``jwk`` or ``x5c`` headers). Verified tokens are cached by SHA-256 of the token, each entry
living no longer than the token's ``exp``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.auth.jwks import JwksCache
from gateway.auth.presets import claim_names, principal_from_claims
from gateway.auth.principal import Principal
from gateway.errors import AuthError
from gateway.policy.model import ClaimNames, Issuer

__all__ = ["TokenVerifier", "bearer_token"]

_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})


def bearer_token(authorization: Sequence[str], *, token_in_query: bool, max_bytes: int) -> str:
    """Extract the one bearer token from the Authorization header values."""
    if token_in_query:
        raise AuthError(
            "tokens in the query string are not accepted; send Authorization: Bearer <token>",
            code="token-malformed",
        )
    if not authorization:
        raise AuthError("no bearer token: send Authorization: Bearer <token>", code="token-missing")
    if len(authorization) > 1:
        raise AuthError("more than one Authorization header", code="token-malformed")
    scheme, _, token = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(
            f"the authorization scheme must be Bearer, not {scheme!r}", code="token-malformed"
        )
    token = token.strip()
    if not token:
        raise AuthError("the bearer token is empty", code="token-malformed")
    if len(token) > max_bytes:
        raise AuthError(f"the token is larger than {max_bytes} bytes", code="token-malformed")
    return token


@dataclass(frozen=True)
class _IssuerRuntime:
    name: str
    config: Issuer
    names: ClaimNames
    keys: JwksCache


class TokenVerifier:
    """Verifies JWT access tokens of the policy's issuers (one JwksCache each, injected)."""

    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        caches: Mapping[str, JwksCache],
        *,
        leeway: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_iss = {
            cfg.issuer: _IssuerRuntime(name, cfg, claim_names(cfg), caches[name])
            for name, cfg in issuers.items()
        }
        self._leeway = leeway
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self.caches = caches

    async def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        now = self._clock()
        if hit is not None:
            principal, expires = hit
            if now < expires:
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
        principal, exp = await self._verify(token, now)
        self._cache[digest] = (principal, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        if token.count(".") != 2:
            raise AuthError(
                "the token is not a JWT (three dot-separated parts)", code="token-malformed"
            )
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token cannot be decoded: {exc}", code="token-malformed") from exc
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise AuthError("the token has no iss claim", code="token-malformed")
        runtime = self._by_iss.get(iss)
        if runtime is None:
            raise AuthError(f"tokens of issuer {iss!r} are not accepted", code="issuer-unknown")
        alg = header.get("alg")
        if alg not in runtime.config.algorithms:
            raise AuthError(
                f"algorithm {alg!r} is not allowed for issuer '{runtime.name}' "
                f"(allowed: {', '.join(runtime.config.algorithms)})",
                code="algorithm-not-allowed",
            )
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
            raise AuthError(f"token type {typ!r} is not an access token", code="token-malformed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("the kid header is not a string", code="token-malformed")
        key = await runtime.keys.get_key(kid)
        if key.alg is not None and key.alg != alg:
            raise AuthError(
                f"key {kid!r} is not for algorithm {alg!r}", code="algorithm-not-allowed"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key.key,
                algorithms=[alg],
                audience=list(runtime.config.audiences),
                issuer=runtime.config.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the token has expired", code="token-expired") from exc
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError) as exc:
            raise AuthError(
                f"the token is not valid yet: {exc}", code="token-not-yet-valid"
            ) from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(
                f"the token's audience is not one of {list(runtime.config.audiences)}",
                code="audience-mismatch",
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("the token's issuer does not match", code="issuer-unknown") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("the token's signature is invalid", code="signature-invalid") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AuthError(str(exc), code="algorithm-not-allowed") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(
                f"the token lacks a required claim: {exc.claim}", code="token-malformed"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is invalid: {exc}", code="token-malformed") from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("the token's sub claim is not a string", code="token-malformed")
        principal = principal_from_claims(runtime.name, runtime.names, claims)
        exp = claims["exp"]
        return principal, float(exp) if isinstance(exp, int | float) else now
