"""RFC 7662 token introspection for one issuer: opaque tokens, and Okta org-server tokens.

Contract:

- The endpoint is the issuer's ``introspection.endpoint``, else the discovery document's
  ``introspection_endpoint``, else ``{issuer}/v1/introspect`` (Okta's) when discovery answers
  without one. Discovery that fails leaves it unresolved (tried again on the next call).
- Each call POSTs ``token`` and ``token_type_hint=access_token`` with client authentication by
  authlib (``client_secret_basic`` or ``client_secret_post``, per the policy).
- An answer is a 200 JSON object with a boolean ``active``, or a 400 whose ``error`` is
  ``unsupported_token_type`` or ``invalid_token`` (the IdP refuses this token: inactive).
  Anything else (network error, timeout, another status such as 401 ``invalid_client``, another
  body) is ``IdpUnavailable`` (503 with Retry-After): the caller's token is not at fault.
- ``active: false`` -> None. ``active: true`` is checked before it is believed: ``iss`` (when
  present) must be the issuer, ``aud`` (when present) must hold a configured audience, ``exp`` and
  ``nbf`` (when present) must hold within the leeway, a ``refresh_token`` is refused, and so is a
  sender-constrained token (``cnf``: ``token-sender-constrained``); it must name a subject
  (``sub``, else ``client_id``). Failures are AuthErrors with the usual codes.
- Answers are cached by SHA-256 of the token (bounded, least recently used first out): an active
  one until the earlier of its ``exp`` and ``cache_seconds`` from now, an inactive one for
  ``cache_seconds`` (so a flood of one bad token asks the IdP once). ``cache_seconds=0``: no cache,
  so a revocation is seen at once. Concurrent calls for one token share one request (single
  flight); at most ``max_concurrency`` requests are in flight to the IdP.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.oauth2.auth import ClientAuth

from gateway.auth.discovery import DiscoveryError, discover, metadata_url_field
from gateway.auth.sender import binding, sender_constrained
from gateway.auth.times import numeric_date, time_claims
from gateway.errors import AuthError, IdpUnavailable
from gateway.policy.model import Introspection, Issuer

__all__ = ["IntrospectionState", "Introspector", "introspectors"]

log = logging.getLogger("spangate.introspect")

Answer = Mapping[str, Any]
# 400 errors that are an answer about the token, not a failure of the IdP or of our client:
# e.g. node-oidc-provider's "Structured JWT Tokens cannot be introspected".
_REFUSALS = frozenset({"unsupported_token_type", "invalid_token"})


@dataclass(frozen=True)
class IntrospectionState:
    """What ``/readyz`` reports about one issuer's introspection."""

    endpoint: str | None
    calls: int
    cached: int
    last_error: str | None


class Introspector:
    def __init__(
        self,
        *,
        name: str,
        issuer: Issuer,
        client: httpx.AsyncClient,
        cache_seconds: float = 60.0,
        leeway: float = 30.0,
        max_entries: int = 10_000,
        max_concurrency: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if issuer.introspection is None:
            raise ValueError(f"issuer {name!r} does not configure introspection")
        self.name = name
        self.issuer = issuer
        self._config: Introspection = issuer.introspection
        self._client = client
        self._cache_seconds = cache_seconds
        self._leeway = leeway
        self._max_entries = max_entries
        self._limit = asyncio.Semaphore(max_concurrency)
        self._clock = clock
        self._endpoint: str | None = self._config.endpoint
        self._auth = ClientAuth(
            self._config.client_id, self._config.client_secret, self._config.auth_method
        )
        self._cache: OrderedDict[bytes, tuple[Answer | None, float]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[Answer | None]] = {}
        self._last_error: str | None = None
        self.calls = 0  # HTTP requests to the introspection endpoint

    async def start(self) -> None:
        """Resolve the endpoint now if discovery is needed (failures are retried later)."""
        try:
            await self._resolve()
        except IdpUnavailable:
            pass

    def state(self) -> IntrospectionState:
        return IntrospectionState(self._endpoint, self.calls, len(self._cache), self._last_error)

    async def introspect(self, token: str) -> Answer | None:
        """The checked active answer, or None when the IdP says the token is not active."""
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._cache.get(digest)
        if hit is not None and now < hit[1]:
            self._cache.move_to_end(digest)
            answer = hit[0]
        else:
            if hit is not None:
                del self._cache[digest]
            task = self._inflight.get(digest)
            if task is None or task.done():  # a finished task is not in flight any more
                task = asyncio.ensure_future(self._ask(token, digest))
                self._inflight[digest] = task
                task.add_done_callback(lambda _: self._inflight.pop(digest, None))
            answer = await asyncio.shield(task)
        return None if answer is None else self._check(answer, self._clock())

    # -- internals ----------------------------------------------------------------------------
    async def _resolve(self) -> str:
        if self._endpoint is not None:
            return self._endpoint
        try:
            meta = await discover(self._client, self.issuer.issuer)
            endpoint = metadata_url_field(meta, "introspection_endpoint")
        except DiscoveryError as exc:
            self._last_error = f"discovery: {exc}"
            raise IdpUnavailable(
                f"the introspection endpoint of issuer '{self.name}' is unknown: {exc}"
            ) from exc
        self._endpoint = endpoint or self.issuer.issuer.rstrip("/") + "/v1/introspect"
        return self._endpoint

    async def _ask(self, token: str, digest: bytes) -> Answer | None:
        endpoint = await self._resolve()
        body = urlencode({"token": token, "token_type_hint": "access_token"})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        uri, headers, body = self._auth.prepare("POST", endpoint, headers, body)
        async with self._limit:
            self.calls += 1
            try:
                response = await self._client.post(uri, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise self._unavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 400 and _error(response) in _REFUSALS:
            self._remember(digest, None)  # the IdP refuses this token: not active here
            return None
        if response.status_code != 200:
            raise self._unavailable(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("active"), bool):
            raise self._unavailable("the answer is not a JSON object with a boolean active")
        self._last_error = None
        answer: Answer | None = document if document["active"] else None
        self._remember(digest, answer)
        return answer

    def _unavailable(self, why: str) -> IdpUnavailable:
        self._last_error = why
        log.warning("introspection for issuer %s failed: %s", self.name, why)
        # The details (the IdP's own error body) go to the log and /readyz, not to the caller.
        return IdpUnavailable(f"token introspection at issuer '{self.name}' is unavailable")

    def _remember(self, digest: bytes, answer: Answer | None) -> None:
        if self._cache_seconds <= 0:
            return
        now = self._clock()
        until = now + self._cache_seconds
        exp = numeric_date(answer.get("exp")) if answer is not None else None
        if exp is not None:
            until = min(until, exp)
        self._cache[digest] = (answer, until)
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def _check(self, answer: Answer, now: float) -> dict[str, Any]:
        iss = answer.get("iss")
        if iss is not None and iss != self.issuer.issuer:
            raise AuthError(
                f"introspection names issuer {iss!r}, not {self.issuer.issuer!r}",
                code="issuer-unknown",
            )
        aud = answer.get("aud")
        if aud is not None:
            given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not set(self.issuer.audiences) & {a for a in given if isinstance(a, str)}:
                raise AuthError(
                    f"the token's audience is not one of {list(self.issuer.audiences)}",
                    code="audience-mismatch",
                )
        times = time_claims(answer, require_exp=False)  # token-malformed: not a NumericDate
        if "exp" in times and times["exp"] <= now - self._leeway:
            raise AuthError("the token has expired", code="token-expired")
        if "nbf" in times and times["nbf"] > now + self._leeway:
            raise AuthError("the token is not valid yet", code="token-not-yet-valid")
        if "cnf" in answer:
            raise sender_constrained(binding(answer["cnf"]))
        if str(answer.get("token_type", "")).lower() == "refresh_token":
            raise AuthError("a refresh token is not an access token", code="token-malformed")
        subject = answer.get("sub")
        if not isinstance(subject, str) or not subject:
            subject = answer.get("client_id")
        if not isinstance(subject, str) or not subject:
            raise AuthError("introspection names no subject for the token", code="token-malformed")
        claims = {k: v for k, v in answer.items() if k != "active"}
        claims.update(iss=self.issuer.issuer, sub=subject)
        return claims


def _error(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


def introspectors(
    issuers: Mapping[str, Issuer],
    client: httpx.AsyncClient,
    *,
    cache_seconds: float,
    leeway: float,
) -> dict[str, Introspector]:
    """One Introspector per issuer that configures ``introspection``, in policy order."""
    return {
        name: Introspector(
            name=name, issuer=cfg, client=client, cache_seconds=cache_seconds, leeway=leeway
        )
        for name, cfg in issuers.items()
        if cfg.introspection is not None
    }
