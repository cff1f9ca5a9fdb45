"""An async JWKS cache per issuer: discovery, keys by ``kid``, bounded refreshes, stale fallback.

Contract (per issuer):

- ``start()`` runs discovery (unless ``jwks_uri`` is configured) and fetches the keys; a failure
  leaves the cache cold and is reported by ``state()``, it does not raise.
- Keys are refreshed in the background once they are older than the refresh interval
  (``Cache-Control: max-age`` from the IdP shortens it, within [60 s, refresh interval]);
  requests keep using the current keys meanwhile.
- An unknown ``kid`` triggers a refetch only if the last fetch started more than
  ``min_refetch_seconds`` ago; all concurrent callers share that one fetch (single flight). So a
  flood of random kids costs the IdP at most one request per interval, and a rotated key is
  accepted as soon as the IdP publishes it.
- When the IdP is unreachable the last good keys keep serving for ``stale_seconds`` after they
  were due for refresh; with no usable keys at all, ``IdpUnavailable`` (503): the token is not at
  fault.
- ``jku``/``x5u``/``jwk``/``x5c`` token headers are never consulted: keys come only from here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from gateway.errors import AuthError, IdpUnavailable

__all__ = ["JwksCache", "KeyState", "SigningKey", "require_safe_url"]

log = logging.getLogger("spangate.jwks")
_MAX_AGE_RE = re.compile(r"max-age=([0-9]+)")
_MIN_TTL = 60.0


def require_safe_url(url: str, what: str) -> str:
    """https, or http only to a loopback host (development and tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        if host == "localhost":
            return url
        try:
            if ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
    raise ValueError(f"{what} must be an https URL (http only for loopback hosts): {url}")


@dataclass(frozen=True)
class SigningKey:
    key: jwt.PyJWK
    alg: str | None  # the JWK's declared alg, when it has one


@dataclass(frozen=True)
class KeyState:
    ready: bool
    keys: int
    age_seconds: float | None
    last_error: str | None
    fetches: int


class JwksCache:
    def __init__(
        self,
        *,
        name: str,
        issuer: str,
        client: httpx.AsyncClient,
        jwks_uri: str | None = None,
        refresh_seconds: float = 300.0,
        stale_seconds: float = 3600.0,
        min_refetch_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.issuer = issuer
        require_safe_url(issuer, f"issuer {name!r}")
        self._jwks_uri = require_safe_url(jwks_uri, f"jwks_uri of {name!r}") if jwks_uri else None
        self._client = client
        self._refresh = refresh_seconds
        self._ttl = refresh_seconds
        self._stale = stale_seconds
        self._min_refetch = min_refetch_seconds
        self._clock = clock
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched_at: float | None = None  # when the current keys were fetched
        self._attempted_at: float | None = None  # when the last fetch started
        self._inflight: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self.fetches = 0  # HTTP fetches of the JWKS, for tests and metrics

    # -- public -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._fetch_once()

    def state(self) -> KeyState:
        age = None if self._fetched_at is None else self._clock() - self._fetched_at
        return KeyState(self._usable(), len(self._keys), age, self._last_error, self.fetches)

    async def get_key(self, kid: str | None) -> SigningKey:
        """The key for ``kid``; AuthError ``key-unknown`` or IdpUnavailable otherwise."""
        now = self._clock()
        if not self._usable():
            await self._fetch_once()
            if not self._usable():
                raise IdpUnavailable(
                    f"no signing keys for issuer '{self.name}' (identity provider unreachable: "
                    f"{self._last_error})"
                )
        elif self._fetched_at is not None and now - self._fetched_at > self._ttl:
            self._refresh_in_background()
        key = self._keys.get(kid)
        if key is None and (
            self._attempted_at is None or now - self._attempted_at >= self._min_refetch
        ):
            await self._fetch_once()
            key = self._keys.get(kid)
        if key is None:
            raise AuthError(f"no key with kid {kid!r} at issuer '{self.name}'", code="key-unknown")
        return key

    # -- internals ----------------------------------------------------------------------------
    def _usable(self) -> bool:
        if not self._keys or self._fetched_at is None:
            return False
        return self._clock() - self._fetched_at <= self._ttl + self._stale

    def _refresh_in_background(self) -> None:
        now = self._clock()
        if self._inflight is None and (
            self._attempted_at is None or now - self._attempted_at >= self._min_refetch
        ):
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._done)

    async def _fetch_once(self) -> None:
        """Join the fetch in flight, or start one; never raises."""
        if self._inflight is None:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refetch:
                return  # rate limit: at most one fetch per interval, warm or cold
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._done)
        await asyncio.shield(self._inflight)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            uri = self._jwks_uri or await self._discover()
            self.fetches += 1
            response = await self._client.get(uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = self._parse(response.json())
        except Exception as exc:  # noqa: BLE001 - any failure leaves the last good keys serving
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("jwks fetch for issuer %s failed: %s", self.name, self._last_error)
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._ttl = self._ttl_from(response.headers.get("cache-control", ""))
        self._last_error = None

    async def _discover(self) -> str:
        base = self.issuer.rstrip("/")
        last: Exception | None = None
        for suffix in (
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ):
            try:
                response = await self._client.get(base + suffix)
                response.raise_for_status()
                meta: dict[str, Any] = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
                continue
            if meta.get("issuer") != self.issuer:
                raise ValueError(
                    f"discovery says issuer {meta.get('issuer')!r}, the policy says {self.issuer!r}"
                )
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str):
                raise ValueError("discovery document has no jwks_uri")
            self._jwks_uri = require_safe_url(uri, f"jwks_uri of {self.name!r}")
            return self._jwks_uri
        raise ValueError(f"discovery failed: {last}")

    def _parse(self, document: Any) -> dict[str | None, SigningKey]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS is not an object with a keys array")
        keys: dict[str | None, SigningKey] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if any(private in entry for private in ("d", "p", "q", "k")):
                continue  # never trust a published private or symmetric key
            try:
                alg = entry.get("alg")
                keys[entry.get("kid")] = SigningKey(
                    jwt.PyJWK(entry), alg if isinstance(alg, str) else None
                )
            except jwt.PyJWKError:
                continue  # a key type or curve we do not use
        if not keys:
            raise ValueError("the JWKS holds no usable signing keys")
        return keys

    def _ttl_from(self, cache_control: str) -> float:
        m = _MAX_AGE_RE.search(cache_control)
        if not m:
            return self._refresh
        return max(_MIN_TTL, min(self._refresh, float(m.group(1))))
