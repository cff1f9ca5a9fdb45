"""Bearer token -> Principal, or an AuthError with a stable code (IdpUnavailable: 503).

JWTs: the header and claims are first read by ``decode.decode_unverified`` (strict JSON, else
``token-malformed`` with a fixed sentence); the token's ``iss`` (read before the signature is
checked, used only to pick the issuer) must equal one configured issuer exactly; that issuer's
pinned algorithms, audiences and keys then decide. pyjwt verifies with ``algorithms`` pinned to the
token's (allowed) alg, ``iss``/``aud``/``exp``/``sub`` required, ``nbf``/``iat`` honoured with the
configured leeway, and an unknown ``crit`` header refused. A sender-constrained token (a ``cnf``
claim: DPoP or mTLS bound) is refused with ``token-sender-constrained``: the gateway does not
verify such bindings. Keys come only from the issuer's JWKS (never from ``jku``, ``x5u``, ``jwk``
or ``x5c`` headers), and a key must fit the alg (type, curve, declared alg). ``typ`` may be absent,
``JWT`` or ``at+jwt``; a recognisable ID token is refused unless the issuer says
``refuse_id_tokens: false`` (or has ``preset: google``, where the ID token is the credential). The
preset's own rules then apply (``presets.principal_for_issuer``: a Kubernetes service-account
``sub``, a verified Google ``email``); a signed token whose audience is wrong is
``audience-mismatch``, or ``api-server-token`` for a Kubernetes token meant for the API server,
even beside the gateway's audience (``presets.audience_refusal``), and so is a legacy Secret-based
Kubernetes token (``iss: kubernetes/serviceaccount``) when the policy has a ``kubernetes`` issuer.
Under ``preset: google`` the issuer ``https://accounts.google.com`` is also picked by ``iss:
accounts.google.com``. Verified JWTs are cached by SHA-256 of the token (bounded, least recently
used first out), each entry living no longer than the token's ``exp``.

Okta org authorization servers (``preset: okta``, issuer without ``/oauth2/``): their tokens are
never validated locally; they are introspected when the issuer configures introspection, else
refused with ``org-server-token``. Before any call such a token must have a JWT's shape (three
non-empty base64url parts, at most ``max_token_bytes`` long; else ``token-malformed``) and an
``alg`` the issuer allows (else ``algorithm-not-allowed``), counted as a ``format`` refusal of
that issuer. A token whose ``iss`` is the origin of a configured Okta custom
authorization server is refused the same way, with advice.

Opaque tokens (anything that is not three dot-separated parts) go to RFC 7662 introspection at
the issuers that configure it and whose token format (length, characters) they fit, in policy
order (fitting none: ``token-malformed``, without a call, counted once in ``refusals["format"]``,
shared by the verifiers of successive reloads): the first that says active decides;
when none does, ``token-inactive`` (or ``idp-unavailable``/``introspection-busy`` if one of them
could not be asked).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from gateway.auth.decode import NOT_A_JWT, NOT_ACCEPTED, NOT_STRICT, decode_unverified, refused
from gateway.auth.introspect import Introspector
from gateway.auth.jwks import JwksCache
from gateway.auth.presets import (
    LEGACY_KUBERNETES_ISSUER,
    accepted_iss,
    audience_refusal,
    introspection_names,
    is_org_server,
    legacy_kubernetes_refusal,
    principal_for_issuer,
    principal_from_claims,
)
from gateway.auth.principal import Principal
from gateway.auth.sender import binding as _binding
from gateway.auth.sender import sender_constrained
from gateway.auth.times import check_times
from gateway.errors import AuthError, IdpUnavailable
from gateway.policy.model import Issuer

__all__ = [
    "ID_TOKEN_CLAIMS",
    "NOT_ACCEPTED",
    "NOT_A_JWT",
    "NOT_STRICT",
    "TokenVerifier",
    "bearer_token",
]

_ACCEPTED_TYP = frozenset({"jwt", "application/jwt", "at+jwt", "application/at+jwt"})
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 section 2.1
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")  # RFC 7515 7.1
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")


def bearer_token(authorization: Sequence[str], *, token_in_query: bool, max_bytes: int) -> str:
    """Extract the one bearer token from the Authorization header values (RFC 6750 syntax)."""
    if token_in_query:
        raise AuthError(
            "tokens in the query string are not accepted; send Authorization: Bearer <token>",
            code="token-malformed",
        )
    if not authorization:
        raise AuthError("no bearer token: send Authorization: Bearer <token>", code="token-missing")
    if len(authorization) > 1:
        raise AuthError(
            "more than one Authorization header; send exactly one", code="token-malformed"
        )
    scheme, _, token = authorization[0].strip().partition(" ")
    if scheme.lower() == "dpop":
        raise sender_constrained("a DPoP key (RFC 9449)")
    if scheme.lower() != "bearer":
        shown = scheme if scheme.isascii() and scheme.isalnum() and len(scheme) <= 20 else "?"
        raise AuthError(
            f"the authorization scheme must be Bearer, not {shown!r}", code="token-malformed"
        )
    token = token.strip()
    if not token:
        raise AuthError("the bearer token is empty", code="token-malformed")
    if len(token) > max_bytes:
        raise AuthError(f"the token is larger than {max_bytes} bytes", code="token-malformed")
    if not _B64TOKEN.match(token):
        raise AuthError(
            "the bearer token has characters a token cannot have (RFC 6750 b64token)",
            code="token-malformed",
        )
    return token


@dataclass(frozen=True)
class _IssuerRuntime:
    name: str
    config: Issuer
    keys: JwksCache | None
    introspector: Introspector | None
    org_server: bool


class TokenVerifier:
    """Verifies the policy's issuers' tokens; one JwksCache (and optionally one Introspector)
    per issuer, injected. ``caches`` and ``introspectors`` are exposed for start-up and /readyz."""

    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        caches: Mapping[str, JwksCache],
        *,
        introspectors: Mapping[str, Introspector] | None = None,
        leeway: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        max_token_bytes: int = 16_384,
        refusals: Counter[str] | None = None,
    ) -> None:
        self.caches = caches
        # Opaque tokens refused for fitting no introspecting issuer (not one issuer's count);
        # pass the same Counter to the next verifier so a reload does not reset it.
        self.refusals: Counter[str] = refusals if refusals is not None else Counter()
        self._max_token_bytes = max_token_bytes
        self.introspectors: Mapping[str, Introspector] = introspectors or {}
        self._runtimes = [
            _IssuerRuntime(
                name,
                cfg,
                caches.get(name),
                self.introspectors.get(name),
                is_org_server(cfg),
            )
            for name, cfg in issuers.items()
        ]
        self._by_iss = {iss: rt for rt in self._runtimes for iss in accepted_iss(rt.config)}
        self._okta_origins = {
            _origin(rt.config.issuer): rt.name
            for rt in self._runtimes
            if rt.config.preset == "okta" and not rt.org_server
        }
        self._leeway = leeway
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size

    async def start(self) -> None:
        """Fetch every issuer's keys and resolve introspection endpoints (never raises)."""
        for cache in self.caches.values():
            await cache.start()
        for introspector in self.introspectors.values():
            await introspector.start()

    async def verify(self, token: str) -> Principal:
        if token.count(".") != 2:
            return await self._opaque(token)
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        now = self._clock()
        if hit is not None:
            principal, expires = hit
            if now < expires:
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
        principal, exp = await self._verify_jwt(token, now)
        if exp is not None:
            self._cache[digest] = (principal, exp)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    # -- JWTs ---------------------------------------------------------------------------------
    async def _verify_jwt(self, token: str, now: float) -> tuple[Principal, float | None]:
        header, unverified = decode_unverified(token)  # strict JSON, or token-malformed
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise AuthError("the token has no iss claim", code="token-malformed")
        runtime = self._by_iss.get(iss)
        if runtime is None:
            raise self._unknown_issuer(iss)
        if runtime.org_server:
            return await self._org_server_token(runtime, token, header), None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in runtime.config.algorithms:
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
        if runtime.keys is None:
            raise AuthError(f"issuer '{runtime.name}' has no keys", code="key-unknown")
        key = await runtime.keys.get_key(kid, alg)
        claims = self._decode(token, runtime, key.key.key, alg, iss, unverified)
        times = check_times(claims, now, self._leeway)
        # Under preset google the ID token is the credential: refuse_id_tokens does not apply.
        id_tokens_refused = runtime.config.refuse_id_tokens and runtime.config.preset != "google"
        if id_tokens_refused and (typ or "").lower() not in (
            "at+jwt",
            "application/at+jwt",
        ):
            found = [c for c in ID_TOKEN_CLAIMS if c in claims]
            if found:
                raise AuthError(
                    f"an ID token is not an access token (it has {', '.join(found)}); "
                    "send the access token",
                    code="token-malformed",
                )
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("the token's sub claim is not a string", code="token-malformed")
        if "cnf" in claims:
            raise sender_constrained(_binding(claims["cnf"]))
        principal = principal_for_issuer(runtime.name, runtime.config, claims)
        return principal, times["exp"]

    def _decode(
        self,
        token: str,
        runtime: _IssuerRuntime,
        key: Any,
        alg: str,
        iss: str,
        unverified: Mapping[str, Any],
    ) -> dict[str, Any]:
        audiences = list(runtime.config.audiences)
        try:
            # pyjwt's own reader: _verify_jwt read these very bytes strictly (decode_unverified)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audiences,
                issuer=iss,  # one of accepted_iss(runtime.config), as the token says
                leeway=self._leeway,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "strict_aud": False,
                    # times are checked by check_times, on the verifier's clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError as exc:
            # pyjwt checks claims after the signature: this token is the issuer's own
            raise audience_refusal(runtime.config, runtime.name, unverified.get("aud")) from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("the token's issuer does not match", code="issuer-unknown") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("the token's signature is invalid", code="signature-invalid") from exc
        except jwt.InvalidAlgorithmError as exc:
            refused("algorithm-not-allowed", exc)
            raise AuthError(
                f"algorithm {alg!r} cannot verify tokens of issuer '{runtime.name}'",
                code="algorithm-not-allowed",
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(
                f"the token lacks a required claim: {exc.claim}", code="token-malformed"
            ) from exc
        except jwt.InvalidTokenError as exc:
            refused("token-malformed", exc)
            raise AuthError(NOT_ACCEPTED, code="token-malformed") from exc
        return claims

    def _unknown_issuer(self, iss: str) -> AuthError:
        if iss == LEGACY_KUBERNETES_ISSUER and any(
            rt.config.preset == "kubernetes" for rt in self._runtimes
        ):
            return legacy_kubernetes_refusal()
        try:
            parts = urlsplit(iss)
            origin = _origin(iss)
        except ValueError:  # not even a URL ("http://["): simply not an issuer we know
            return AuthError(
                f"tokens of issuer {_short(iss)} are not accepted", code="issuer-unknown"
            )
        if "/oauth2/" not in parts.path + "/" and (name := self._okta_origins.get(origin)):
            return AuthError(
                f"this token comes from the Okta org authorization server {_short(iss)}, whose tokens "
                f"cannot be validated outside Okta; get tokens from a custom authorization "
                f"server such as issuer '{name}' ({self._runtime(name).config.issuer})",
                code="org-server-token",
            )
        return AuthError(f"tokens of issuer {_short(iss)} are not accepted", code="issuer-unknown")

    def _runtime(self, name: str) -> _IssuerRuntime:
        return next(rt for rt in self._runtimes if rt.name == name)

    async def _org_server_token(
        self, runtime: _IssuerRuntime, token: str, header: Mapping[str, Any]
    ) -> Principal:
        if runtime.introspector is None:
            raise AuthError(
                f"issuer '{runtime.name}' is an Okta org authorization server: its tokens cannot "
                "be validated locally; use a custom authorization server (an issuer with "
                "/oauth2/ in its URL), or configure introspection for this issuer",
                code="org-server-token",
            )
        # Anyone can write a three-part string naming this issuer: before it costs a call (and
        # the issuer's budget), it must look like a signed JWT this issuer could have issued.
        if len(token) > self._max_token_bytes or not _COMPACT_JWS.fullmatch(token):
            runtime.introspector.refused["format"] += 1
            raise AuthError(
                f"the token names issuer '{runtime.name}' but is not a signed JWT (three "
                f"non-empty base64url parts, at most {self._max_token_bytes} bytes)",
                code="token-malformed",
            )
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in runtime.config.algorithms:
            runtime.introspector.refused["format"] += 1
            raise AuthError(
                f"algorithm {alg!r} is not allowed for issuer '{runtime.name}' "
                f"(allowed: {', '.join(runtime.config.algorithms)})",
                code="algorithm-not-allowed",
            )
        answer = await runtime.introspector.introspect(token)
        if answer is None:
            raise AuthError(
                f"issuer '{runtime.name}' says the token is not active", code="token-inactive"
            )
        return self._introspected(runtime, answer)

    # -- opaque tokens ------------------------------------------------------------------------
    async def _opaque(self, token: str) -> Principal:
        candidates = [rt for rt in self._runtimes if rt.introspector is not None]
        if not candidates:
            raise AuthError(
                "the token is not a JWT (three dot-separated parts), and no issuer of the "
                "policy introspects opaque tokens",
                code="token-malformed",
            )
        # Before any call: a string that cannot be a token of an introspecting issuer (length,
        # characters) is refused here, so junk never reaches an IdP or its budget.
        fitting = [rt for rt in candidates if rt.introspector and rt.introspector.accepts(token)]
        if not fitting:
            self.refusals["format"] += 1
            shapes = "; ".join(
                f"'{rt.name}': {rt.introspector.describe_format()}"
                for rt in candidates
                if rt.introspector is not None
            )
            raise AuthError(
                "the token is neither a JWT nor an opaque token of an issuer that introspects "
                f"({shapes})",
                code="token-malformed",
            )
        unavailable: IdpUnavailable | None = None
        for runtime in fitting:
            assert runtime.introspector is not None
            try:
                answer = await runtime.introspector.introspect(token)
            except IdpUnavailable as exc:
                unavailable = exc
                continue
            if answer is not None:
                return self._introspected(runtime, answer)
        if unavailable is not None:
            raise unavailable
        raise AuthError(
            "the token is not active (revoked, expired or unknown to every issuer that "
            "introspects)",
            code="token-inactive",
        )

    def _introspected(self, runtime: _IssuerRuntime, answer: Mapping[str, Any]) -> Principal:
        names = introspection_names(runtime.config)
        return principal_from_claims(runtime.name, names, answer, introspected=True)


def _short(value: str, limit: int = 120) -> str:
    """A caller-supplied value, quoted and cut to ``limit`` characters, for an error detail."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
