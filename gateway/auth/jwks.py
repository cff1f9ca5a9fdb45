"""An async JWKS cache per issuer: discovery, keys by ``kid``, bounded refreshes, stale fallback.

Contract (per issuer; every time is read from the injected ``clock``):

- ``start()`` runs discovery (unless ``jwks_uri`` is configured) and fetches the keys; a failure
  leaves the cache cold and is reported by ``state()``, it does not raise.
- Keys are refreshed in the background once they are older than their TTL: the refresh interval,
  shortened by the IdP's ``Cache-Control: max-age`` (``no-cache``/``no-store`` count as 0) but
  never below ``min(60 s, refresh interval)``. Requests keep using the current keys meanwhile.
- An unknown ``kid`` joins the fetch in flight if there is one, else starts one only if the last
  fetch started at least ``min_refetch_seconds`` ago; all concurrent callers share that one fetch
  (single flight). So a flood of random kids costs the IdP at most one request per interval, and
  a rotated key is accepted as soon as the IdP publishes it (within that interval).
- When the IdP is unreachable the last good keys keep serving for ``stale_seconds`` after they
  were due for refresh; with no usable keys at all, ``IdpUnavailable`` (503 with Retry-After):
  the token is not at fault. A cold cache also fetches at most once per ``min_refetch_seconds``.
- A fetched set replaces the old one whole (a key the IdP stopped publishing is gone). Entries
  with ``use`` other than ``sig``, with private or symmetric material, or of a type pyjwt cannot
  load are skipped; a set with no usable key counts as a failed fetch.
- ``jku``/``x5u``/``jwk``/``x5c`` token headers are never consulted: keys come only from here.
- ``enabled=False`` (an issuer whose tokens are only introspected, e.g. an Okta org server): no
  fetches; ``state()`` says ready with no keys; ``get_key`` raises ``key-unknown``.
- A fetch (discovery and the JWKS request together) has one overall deadline,
  ``deadline_seconds``: a hung issuer costs a cold request at most that long, however many
  discovery documents there are to try. Once discovery has found the ``jwks_uri`` it is not
  repeated.
- With ``background=True`` (the server) ``start()`` also starts a task that keeps the cache
  healthy without waiting for a token: while the cache is cold or its last fetch failed it retries
  after 1 s, doubling up to ``retry_max_seconds`` (each wait jittered down to half), so readiness
  follows the IdP; while healthy it refreshes the keys when they are due. It survives any
  failure (logged, then retried with back-off) and an IdP down for any time. ``aclose()`` stops
  it and never raises.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from gateway.auth.discovery import discover, metadata_url_field
from gateway.auth.urls import require_safe_url
from gateway.errors import AuthError, IdpUnavailable

__all__ = ["JwksCache", "KeyState", "SigningKey", "key_fits", "require_safe_url"]

log = logging.getLogger("spangate.jwks")
_MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?([0-9]+)")
_NO_CACHE_RE = re.compile(r"(?:^|[,\s])(?:no-cache|no-store)(?:$|[,\s=])")
_MIN_TTL = 60.0

# The key type (and EC curve / OKP subtype) each algorithm needs.
_KEY_FOR_ALG: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


@dataclass(frozen=True)
class SigningKey:
    """One published verification key. ``alg`` is the JWK's declared alg, when it has one."""

    kid: str | None
    key: jwt.PyJWK
    alg: str | None
    kty: str
    crv: str | None


def key_fits(key: SigningKey, alg: str) -> bool:
    """Whether ``key`` may verify a signature made with ``alg`` (type, curve and declared alg)."""
    wanted = _KEY_FOR_ALG.get(alg)
    if wanted is None or key.kty != wanted[0]:
        return False
    if wanted[1] is not None and key.crv not in wanted[1]:
        return False
    return key.alg is None or key.alg == alg


@dataclass(frozen=True)
class KeyState:
    """What ``/readyz`` reports for one issuer."""

    ready: bool
    keys: int
    age_seconds: float | None
    last_error: str | None
    fetches: int
    stale: bool = False
    jwks_uri: str | None = None
    enabled: bool = True


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
        enabled: bool = True,
        deadline_seconds: float | None = None,
        background: bool = False,
        retry_max_seconds: float = 60.0,
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
        self.enabled = enabled
        self._keys: tuple[SigningKey, ...] = ()
        self._fetched_at: float | None = None  # when the current keys were fetched
        self._attempted_at: float | None = None  # when the last fetch started
        self._inflight: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._deadline = deadline_seconds
        self._background = background
        self._retry_max = max(retry_max_seconds, 0.001)
        self._keeper: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # healthy <-> failing: the keeper recomputes its wait
        self.fetches = 0  # HTTP fetches of the JWKS document, for tests and metrics

    # -- public -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.enabled:
            await self._fetch_once()
            if self._background and self._keeper is None:
                self._keeper = asyncio.ensure_future(self._keep())

    async def aclose(self) -> None:
        """Stop the background task (the cache keeps answering from what it has); never raises
        (a task that died is logged, not re-raised: later closers must still run)."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            try:
                await keeper
            except asyncio.CancelledError:
                pass
            except Exception:  # closing must not fail a reload or shutdown
                log.exception("the background key refresh of issuer %s had failed", self.name)

    @property
    def ttl_seconds(self) -> float:
        """The current keys' refresh interval (after Cache-Control)."""
        return self._ttl

    def state(self) -> KeyState:
        if not self.enabled:
            return KeyState(True, 0, None, None, 0, enabled=False)
        age = None if self._fetched_at is None else self._clock() - self._fetched_at
        return KeyState(
            ready=self._usable(),
            keys=len(self._keys),
            age_seconds=age,
            last_error=self._last_error,
            fetches=self.fetches,
            stale=age is not None and age > self._ttl,
            jwks_uri=self._jwks_uri,
        )

    async def get_key(self, kid: str | None, alg: str) -> SigningKey:
        """The key for ``kid`` that fits ``alg`` (without a kid: the one key that fits ``alg``).

        AuthError ``key-unknown`` when there is none (after at most one refetch, see the module
        docstring), ``algorithm-not-allowed`` when ``kid`` names a key of another type or alg;
        IdpUnavailable when no usable keys can be had.
        """
        if not self.enabled:
            raise AuthError(f"issuer '{self.name}' has no local keys", code="key-unknown")
        if not self._usable():
            await self._fetch_once()
            if not self._usable():
                raise IdpUnavailable(
                    f"no signing keys for issuer '{self.name}': its identity provider is "
                    "unreachable (details in the log and /readyz)",
                    retry_after=max(1, math.ceil(self._min_refetch)),
                )
        elif self._fetched_at is not None and self._clock() - self._fetched_at > self._ttl:
            self._refresh_in_background()
        key = self._find(kid, alg)
        if key is None:
            if (inflight := self._running()) is not None:
                await asyncio.shield(inflight)
            elif self._may_fetch():
                await self._fetch_once()
            key = self._find(kid, alg)
        if key is None:
            raise AuthError(f"no key with kid {kid!r} at issuer '{self.name}'", code="key-unknown")
        return key

    # -- internals ----------------------------------------------------------------------------
    def _find(self, kid: str | None, alg: str) -> SigningKey | None:
        if kid is None:
            fitting = [k for k in self._keys if key_fits(k, alg)]
            return fitting[0] if len(fitting) == 1 else None
        named = [k for k in self._keys if k.kid == kid]
        for key in named:
            if key_fits(key, alg):
                return key
        if named:
            raise AuthError(
                f"key {kid!r} of issuer '{self.name}' is not a key for algorithm {alg!r}",
                code="algorithm-not-allowed",
            )
        return None

    def _usable(self) -> bool:
        if not self._keys or self._fetched_at is None:
            return False
        return self._clock() - self._fetched_at <= self._ttl + self._stale

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refetch

    def _running(self) -> asyncio.Task[None] | None:
        """The fetch in flight (a finished task whose callbacks have not run yet is not)."""
        if self._inflight is not None and self._inflight.done():
            self._inflight = None
        return self._inflight

    def _refresh_in_background(self) -> None:
        if self._running() is None and self._may_fetch():
            self._inflight = asyncio.ensure_future(self._fetch())

    async def _fetch_once(self) -> None:
        """Join the fetch in flight, or start one if the rate limit allows; never raises."""
        inflight = self._running()
        if inflight is None:
            if not self._may_fetch():
                return  # rate limit: at most one fetch per interval, warm or cold
            inflight = self._inflight = asyncio.ensure_future(self._fetch())
        await asyncio.shield(inflight)

    def _healthy(self) -> bool:
        return self._fetched_at is not None and self._last_error is None and self._usable()

    async def _keep(self) -> None:
        """The background task (see the module docstring); never raises but CancelledError.

        The back-off exponent stops growing once the wait has reached ``retry_max_seconds``
        (an IdP down for days must not overflow it), and anything unexpected is logged and
        retried with the same back-off: the task must outlive every failure, or readiness
        would again wait for a token."""
        failures = 0
        while True:
            try:
                if self._healthy():
                    failures = 0
                    assert self._fetched_at is not None
                    wait = max(1.0, self._ttl - (self._clock() - self._fetched_at))
                else:
                    wait = self._retry_wait(failures)
                    if 2.0**failures < self._retry_max:
                        failures += 1
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                    continue  # a request's fetch changed the state: wait again from there
                except TimeoutError:
                    pass
                inflight = self._running()
                if inflight is None:
                    inflight = self._inflight = asyncio.ensure_future(self._fetch())
                await asyncio.shield(inflight)
            except asyncio.CancelledError:
                raise
            except Exception:  # the keeper must survive anything; logged
                log.exception("background key refresh for issuer %s failed", self.name)
                await asyncio.sleep(self._retry_wait(failures))
                if 2.0**failures < self._retry_max:
                    failures += 1

    def _retry_wait(self, failures: int) -> float:
        return min(2.0**failures, self._retry_max) * random.uniform(0.5, 1.0)  # noqa: S311

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        was_healthy = self._healthy()
        try:
            async with asyncio.timeout(self._deadline):
                uri = self._jwks_uri or await self._discover()
                self.fetches += 1
                response = await self._client.get(uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = self._parse(response.json())
        except Exception as exc:  # noqa: BLE001 - any failure leaves the last good keys serving
            if isinstance(exc, TimeoutError):
                self._last_error = f"TimeoutError: no answer within {self._deadline} s"
            else:
                self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("jwks fetch for issuer %s failed: %s", self.name, self._last_error)
            if was_healthy:
                self._changed.set()
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._ttl = self._ttl_from(response.headers.get("cache-control", ""))
        self._last_error = None
        if not was_healthy:
            self._changed.set()

    async def _discover(self) -> str:
        meta = await discover(self._client, self.issuer)
        uri = metadata_url_field(meta, "jwks_uri")
        if uri is None:
            raise ValueError("the discovery document has no jwks_uri")
        self._jwks_uri = uri
        return uri

    def _parse(self, document: Any) -> tuple[SigningKey, ...]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS is not an object with a keys array")
        keys: list[SigningKey] = []
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if any(private in entry for private in ("d", "p", "q", "k")):
                continue  # never trust a published private or symmetric key
            kid, alg, kty, crv = (entry.get(m) for m in ("kid", "alg", "kty", "crv"))
            if kid is not None and not isinstance(kid, str):
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                continue  # a key type, curve or alg we do not use
            keys.append(
                SigningKey(
                    kid=kid,
                    key=key,
                    alg=alg if isinstance(alg, str) else None,
                    kty=str(kty),
                    crv=crv if isinstance(crv, str) else None,
                )
            )
        if not keys:
            raise ValueError("the JWKS holds no usable signing keys")
        return tuple(keys)

    def _ttl_from(self, cache_control: str) -> float:
        floor = min(_MIN_TTL, self._refresh)
        if _NO_CACHE_RE.search(cache_control.lower()):
            return floor
        m = _MAX_AGE_RE.search(cache_control.lower())
        if not m:
            return self._refresh
        return max(floor, min(self._refresh, float(m.group(1))))
