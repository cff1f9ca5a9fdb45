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
- Answers are cached by SHA-256 of the token: an active one until the earlier of its ``exp``
  and ``cache_seconds`` from now, an inactive one for ``cache_seconds`` (so a flood of one bad
  token asks the IdP once), each kind in its own bounded LRU (``answers.AnswerCache``: a flood of
  unknown tokens cannot evict active answers). ``cache_seconds=0``: no cache, so a revocation is
  seen at once. Concurrent calls for one token share one request (single flight).
- The IdP is protected from floods (every check below happens before any call, and cache hits
  and joins of a call in flight pass them all): ``accepts`` refuses a token whose length or
  characters cannot be this issuer's (the policy's ``token_min_length``, ``token_max_length``,
  ``token_charset``); at most ``rate`` calls per second (token bucket, ``burst`` at once) and at
  most ``max_concurrency`` calls in flight, with as many again waiting for a slot; beyond that,
  ``IntrospectionBusy`` (503 ``introspection-busy``). After a 429 no call is made until its
  ``Retry-After`` (at most 300 s; without one 1 s, doubling per 429 in a row up to 60 s) has
  passed: ``IdpUnavailable`` with the remaining time as Retry-After. Endpoint discovery runs
  within the call's budget, once at a time (shared by all waiting), within ``deadline_seconds``.
- Counters (``/readyz`` and ``/metrics``): calls by result (``active``, ``inactive``,
  ``throttled`` for a 429, ``error``: a failed call or a failed endpoint discovery; a discovery
  that succeeds is not counted), refusals by reason (``format``: an Okta org-server token without
  a JWT's shape, counted by the verifier; ``rate``, ``concurrency``, ``backoff``) and cache hits.
  An opaque token that fits no issuer is counted once by the verifier, not here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.oauth2.auth import ClientAuth

from gateway.auth.answers import Answer, AnswerCache
from gateway.auth.discovery import DiscoveryError, discover, metadata_url_field
from gateway.auth.sender import binding, sender_constrained
from gateway.auth.throttle import Backoff, TokenBucket, retry_after_seconds
from gateway.auth.times import numeric_date, time_claims
from gateway.errors import AuthError, IdpUnavailable, IntrospectionBusy
from gateway.policy.model import Introspection, Issuer

__all__ = [
    "CALL_RESULTS",
    "REFUSAL_REASONS",
    "INTROSPECTOR_FIELDS",
    "IntrospectionState",
    "Introspector",
    "introspectors",
]

log = logging.getLogger("spangate.introspect")

# 400 errors that are an answer about the token, not a failure of the IdP or of our client:
# e.g. node-oidc-provider's "Structured JWT Tokens cannot be introspected".
_REFUSALS = frozenset({"unsupported_token_type", "invalid_token"})


_CHARSETS = {
    "b64token": re.compile(r"[A-Za-z0-9\-._~+/]+=*"),
    "base64url": re.compile(r"[A-Za-z0-9\-_]+"),
    "hex": re.compile(r"[0-9A-Fa-f]+"),
}
CALL_RESULTS = ("active", "inactive", "throttled", "error")
# What an Introspector depends on in its issuer's policy: the same values keep it (its cached
# answers, budget, back-off and counters) across a reload; ``audience`` is checked on every answer.
INTROSPECTOR_FIELDS = {"issuer", "preset", "audience", "introspection"}
REFUSAL_REASONS = ("format", "rate", "concurrency", "backoff")


@dataclass(frozen=True)
class IntrospectionState:
    """What ``/readyz`` reports about one issuer's introspection."""

    endpoint: str | None
    calls: int
    cached: int
    last_error: str | None
    cached_active: int = 0
    cached_inactive: int = 0
    calls_by_result: Mapping[str, int] = field(default_factory=dict)
    refused: Mapping[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    in_flight: int = 0
    backoff_seconds: float = 0.0


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
        max_inactive_entries: int = 10_000,
        max_concurrency: int = 8,
        rate: float = 50.0,
        burst: int = 100,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        deadline_seconds: float | None = None,
    ) -> None:
        if issuer.introspection is None:
            raise ValueError(f"issuer {name!r} does not configure introspection")
        self.name = name
        self.issuer = issuer
        self._config: Introspection = issuer.introspection
        self._client = client
        self._cache_seconds = cache_seconds
        self._leeway = leeway
        self._concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=monotonic)
        self._backoff = Backoff(clock=monotonic)
        self._pending = 0  # calls admitted and not finished (in flight or waiting for a slot)
        self._clock = clock
        self._endpoint: str | None = self._config.endpoint
        self._resolving: asyncio.Task[str] | None = None
        self._deadline = deadline_seconds
        self._auth = ClientAuth(
            self._config.client_id, self._config.client_secret, self._config.auth_method
        )
        self._charset = _CHARSETS[self._config.token_charset]
        self._answers = AnswerCache(max_active=max_entries, max_inactive=max_inactive_entries)
        self._inflight: dict[bytes, asyncio.Task[Answer | None]] = {}
        self._last_error: str | None = None
        self.results: Counter[str] = Counter({r: 0 for r in CALL_RESULTS})
        self.refused: Counter[str] = Counter({r: 0 for r in REFUSAL_REASONS})
        self.cache_hits = 0

    @property
    def calls(self) -> int:
        """Introspection requests to the IdP, by any result, plus endpoint discoveries that
        failed (counted as ``error``); a discovery that succeeds is not counted."""
        return sum(self.results.values())

    async def start(self) -> None:
        """Resolve the endpoint now if discovery is needed (failures are retried later)."""
        try:
            await self._resolve()
        except IdpUnavailable:
            pass

    def state(self) -> IntrospectionState:
        active, inactive = self._answers.sizes()
        return IntrospectionState(
            endpoint=self._endpoint,
            calls=self.calls,
            cached=active + inactive,
            last_error=self._last_error,
            cached_active=active,
            cached_inactive=inactive,
            calls_by_result=dict(self.results),
            refused=dict(self.refused),
            cache_hits=self.cache_hits,
            in_flight=self._pending,
            backoff_seconds=self._backoff.remaining(),
        )

    def accepts(self, token: str) -> bool:
        """Whether ``token`` can be an opaque token of this issuer (length and characters, per
        the policy). Checked before any call, cache lookups included. Not counted here: a token
        may fit another issuer; the verifier counts one refusal when it fits none."""
        return (
            self._config.token_min_length <= len(token) <= self._config.token_max_length
            and self._charset.fullmatch(token) is not None
        )

    def serves(self, issuer: Issuer) -> bool:
        """Whether this introspector can serve ``issuer`` (a reloaded policy's) as it is."""
        return self.issuer.model_dump(include=INTROSPECTOR_FIELDS) == issuer.model_dump(
            include=INTROSPECTOR_FIELDS
        )

    async def aclose(self) -> None:
        """Drop the cached answers (an introspector a reload dropped serves no more tokens;
        calls in flight finish for the requests waiting on them)."""
        self._cache_seconds = 0.0
        self._answers = AnswerCache()

    def describe_format(self) -> str:
        low, high = self._config.token_min_length, self._config.token_max_length
        size = f"{low}" if low == high else f"{low} to {high}"
        return f"{size} {self._config.token_charset} characters"

    async def introspect(self, token: str) -> Answer | None:
        """The checked active answer, or None when the IdP says the token is not active."""
        digest = hashlib.sha256(token.encode()).digest()
        found, answer = self._answers.get(digest, self._clock())
        if found:
            self.cache_hits += 1
        else:
            task = self._inflight.get(digest)
            if task is None or task.done():  # a finished task is not in flight any more
                self._admit()  # raises when the IdP may not be called now
                task = asyncio.ensure_future(self._ask(token, digest))
                self._inflight[digest] = task
                task.add_done_callback(lambda _: self._inflight.pop(digest, None))
            answer = await asyncio.shield(task)
        return None if answer is None else self._check(answer, self._clock())

    # -- internals ----------------------------------------------------------------------------
    def _admit(self) -> None:
        """Take one call from the budget (back-off, concurrency, rate), or refuse."""
        if (wait := self._backoff.remaining()) > 0:
            self.refused["backoff"] += 1
            raise IdpUnavailable(
                f"issuer '{self.name}' asked the gateway to slow down (HTTP 429); token "
                "introspection resumes after its back-off",
                retry_after=max(1, math.ceil(wait)),
            )
        if self._pending >= 2 * self._concurrency:
            self.refused["concurrency"] += 1
            raise IntrospectionBusy(
                f"too many token introspections in flight at issuer '{self.name}'", retry_after=1
            )
        if (wait := self._bucket.take()) > 0:
            self.refused["rate"] += 1
            raise IntrospectionBusy(
                f"the token introspection budget of issuer '{self.name}' is spent for now",
                retry_after=max(1, math.ceil(wait)),
            )
        self._pending += 1

    async def _resolve(self) -> str:
        if self._endpoint is not None:
            return self._endpoint
        # One discovery at a time, shared by everyone waiting (its failure too); within one
        # overall deadline, however many metadata documents there are to try.
        if self._resolving is None or self._resolving.done():
            self._resolving = asyncio.ensure_future(self._discover())
        return await asyncio.shield(self._resolving)

    async def _discover(self) -> str:
        try:
            async with asyncio.timeout(self._deadline):
                meta = await discover(self._client, self.issuer.issuer)
            endpoint = metadata_url_field(meta, "introspection_endpoint")
        except (DiscoveryError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {self._deadline} s"
            self._last_error = f"discovery: {why}"
            self.results["error"] += 1
            raise IdpUnavailable(
                f"the introspection endpoint of issuer '{self.name}' is unknown: {why}"
            ) from exc
        self._endpoint = endpoint or self.issuer.issuer.rstrip("/") + "/v1/introspect"
        return self._endpoint

    async def _ask(self, token: str, digest: bytes) -> Answer | None:
        try:
            async with self._slots:
                return await self._call(token, digest)
        finally:
            self._pending -= 1

    async def _call(self, token: str, digest: bytes) -> Answer | None:
        endpoint = await self._resolve()
        body = urlencode({"token": token, "token_type_hint": "access_token"})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        uri, headers, body = self._auth.prepare("POST", endpoint, headers, body)
        try:
            response = await self._client.post(uri, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429:
            self.results["throttled"] += 1
            delay = self._backoff.throttled(
                retry_after_seconds(response.headers.get("retry-after"))
            )
            self._last_error = f"HTTP 429: backing off for {delay:.0f} s"
            log.warning("introspection at issuer %s answered 429: %s", self.name, self._last_error)
            raise IdpUnavailable(
                f"token introspection at issuer '{self.name}' is unavailable",
                retry_after=max(1, math.ceil(delay)),
            )
        self._backoff.answered()
        if response.status_code == 400 and _error(response) in _REFUSALS:
            self.results["inactive"] += 1
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
        self.results["active" if document["active"] else "inactive"] += 1
        answer: Answer | None = document if document["active"] else None
        self._remember(digest, answer)
        return answer

    def _unavailable(self, why: str) -> IdpUnavailable:
        self.results["error"] += 1
        self._last_error = why
        log.warning("introspection for issuer %s failed: %s", self.name, why)
        # The details (the IdP's own error body) go to the log and /readyz, not to the caller.
        return IdpUnavailable(f"token introspection at issuer '{self.name}' is unavailable")

    def _remember(self, digest: bytes, answer: Answer | None) -> None:
        if self._cache_seconds <= 0:
            return
        until = self._clock() + self._cache_seconds
        exp = numeric_date(answer.get("exp")) if answer is not None else None
        if exp is not None:
            until = min(until, exp)
        self._answers.put(digest, answer, until)

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
    rate: float = 50.0,
    burst: int = 100,
    max_concurrency: int = 8,
    deadline_seconds: float | None = None,
    previous: Mapping[str, Introspector] | None = None,
) -> dict[str, Introspector]:
    """One Introspector per issuer that configures ``introspection``, in policy order. An
    issuer's ``previous`` one is kept when it ``serves`` the issuer unchanged (a reload that does
    not touch it keeps its cached answers, budget and counters); the caller closes dropped ones."""
    kept = previous or {}
    return {
        name: old
        if (old := kept.get(name)) is not None and old.serves(cfg)
        else Introspector(
            name=name,
            issuer=cfg,
            client=client,
            cache_seconds=cache_seconds,
            leeway=leeway,
            rate=rate,
            burst=burst,
            max_concurrency=max_concurrency,
            deadline_seconds=deadline_seconds,
        )
        for name, cfg in issuers.items()
        if cfg.introspection is not None
    }
