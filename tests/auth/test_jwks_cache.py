"""JwksCache timing rules with an injected clock and an IdP behind httpx.MockTransport."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt
import pytest
from authkit import ISSUER, Clock, FakeIdp, client_for, ec_key, ed_key, rsa_key

from gateway.auth.jwks import JwksCache, SigningKey, key_fits
from gateway.errors import AuthError, IdpUnavailable


def cache_for(idp: FakeIdp, clock: Clock, **kwargs: Any) -> JwksCache:
    options: dict[str, Any] = {
        "refresh_seconds": 300.0,
        "stale_seconds": 600.0,
        "min_refetch_seconds": 5.0,
    }
    options.update(kwargs)
    return JwksCache(name="idp", issuer=idp.issuer, client=client_for(idp), clock=clock, **options)


@pytest.mark.parametrize(
    "document", ["openid-configuration", "oauth-authorization-server", "rfc8414"]
)
async def test_discovery_from_each_metadata_document(document: str) -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], discovery=document)
    cache = cache_for(idp, Clock())
    await cache.start()
    state = cache.state()
    assert state.ready and state.keys == 1 and state.last_error is None
    assert state.jwks_uri == idp.jwks_uri
    assert (await cache.get_key("r1", "RS256")).kid == "r1"


async def test_discovery_naming_another_issuer_is_refused() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], meta_issuer="https://evil.example/oauth2/default")
    cache = cache_for(idp, Clock())
    await cache.start()
    state = cache.state()
    assert not state.ready
    assert state.last_error is not None and "evil.example" in state.last_error
    assert idp.jwks_fetches == 0


async def test_discovery_refuses_a_plain_http_jwks_uri() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")])
    client = client_for(idp)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": "http://idp.example/k"})
        return idp.handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    cache = JwksCache(name="idp", issuer=ISSUER, client=client, clock=Clock())
    await cache.start()
    assert not cache.state().ready
    assert "https" in (cache.state().last_error or "")


async def test_explicit_jwks_uri_skips_discovery() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], discovery="nowhere")
    cache = cache_for(idp, Clock(), jwks_uri=idp.jwks_uri)
    await cache.start()
    assert cache.state().ready
    assert [str(r.url) for r in idp.requests] == [idp.jwks_uri]


def test_unsafe_urls_are_refused_at_construction() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="https"):
        JwksCache(name="x", issuer="http://idp.example/oauth2/default", client=client)
    with pytest.raises(ValueError, match="https"):
        JwksCache(name="x", issuer=ISSUER, client=client, jwks_uri="http://idp.example/keys")
    JwksCache(name="x", issuer="http://127.0.0.1:9/oauth2/default", client=client)
    JwksCache(name="x", issuer="http://[::1]:9/oauth2/default", client=client)


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 300.0),
        ("public, max-age=120", 120.0),
        ("max-age=5", 60.0),  # never below the 60 s floor
        ("max-age=86400", 300.0),  # never above the configured interval
        ("no-cache", 60.0),
        ("no-store, max-age=600", 60.0),
    ],
)
async def test_cache_control_sets_the_ttl_within_bounds(header: str | None, ttl: float) -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], cache_control=header)
    cache = cache_for(idp, Clock())
    await cache.start()
    assert cache.ttl_seconds == ttl


async def test_refresh_after_ttl_happens_in_the_background() -> None:
    clock = Clock()
    old, new = rsa_key("old"), rsa_key("new")
    idp = FakeIdp(keys=[old], cache_control="max-age=120")
    cache = cache_for(idp, clock)
    await cache.start()
    clock.advance(100)
    await cache.get_key("old", "RS256")
    assert idp.jwks_fetches == 1  # still fresh
    idp.keys = [old, new]
    clock.advance(30)  # past the 120 s TTL
    assert (await cache.get_key("old", "RS256")).kid == "old"  # served at once from the cache
    for _ in range(5):
        await asyncio.sleep(0)
    assert idp.jwks_fetches == 2
    assert (await cache.get_key("new", "RS256")).kid == "new"
    assert cache.state().age_seconds == 0


async def test_unknown_kids_share_one_fetch_and_are_rate_limited() -> None:
    clock = Clock()
    idp = FakeIdp(keys=[rsa_key("r1")])
    cache = cache_for(idp, clock, min_refetch_seconds=5.0)
    await cache.start()
    assert idp.jwks_fetches == 1
    clock.advance(10)

    async def attempt(kid: str) -> str:
        try:
            await cache.get_key(kid, "RS256")
        except AuthError as exc:
            return exc.code
        return "ok"

    codes = await asyncio.gather(*(attempt(f"random-{i}") for i in range(200)))
    assert set(codes) == {"key-unknown"}
    assert idp.jwks_fetches == 2  # 200 unknown kids at once: one fetch
    codes = await asyncio.gather(*(attempt(f"again-{i}") for i in range(200)))
    assert idp.jwks_fetches == 2  # within min_refetch_seconds: none
    clock.advance(5)
    await attempt("later")
    assert idp.jwks_fetches == 3  # the next interval: one more


async def test_a_rotated_key_is_accepted_as_soon_as_it_is_published() -> None:
    clock = Clock()
    old, rotated = rsa_key("k1"), rsa_key("k2")
    idp = FakeIdp(keys=[old])
    cache = cache_for(idp, clock, min_refetch_seconds=5.0)
    await cache.start()
    clock.advance(6)
    idp.keys = [rotated]
    assert (await cache.get_key("k2", "RS256")).kid == "k2"
    assert idp.jwks_fetches == 2
    with pytest.raises(AuthError) as gone:  # the old key left with the new set
        await cache.get_key("k1", "RS256")
    assert gone.value.code == "key-unknown"


async def test_stale_keys_serve_for_a_bounded_time_when_the_idp_is_down() -> None:
    clock = Clock()
    idp = FakeIdp(keys=[rsa_key("r1")])
    cache = cache_for(idp, clock, refresh_seconds=300.0, stale_seconds=600.0)
    await cache.start()
    idp.up = False
    clock.advance(800)  # past the TTL, within TTL + stale
    assert (await cache.get_key("r1", "RS256")).kid == "r1"
    await asyncio.sleep(0)
    state = cache.state()
    assert state.ready and state.stale
    assert state.last_error is not None and "ConnectError" in state.last_error
    clock.advance(101)  # past TTL + stale
    with pytest.raises(IdpUnavailable) as down:
        await cache.get_key("r1", "RS256")
    assert down.value.status == 503
    assert down.value.headers["Retry-After"] == "5"
    assert not cache.state().ready
    idp.up = True
    clock.advance(5)
    assert (await cache.get_key("r1", "RS256")).kid == "r1"  # recovers on its own


async def test_cold_cache_with_the_idp_down_is_503_and_fetches_at_most_once_per_interval() -> None:
    clock = Clock()
    idp = FakeIdp(keys=[rsa_key("r1")], up=False)
    cache = cache_for(idp, clock, jwks_uri=FakeIdp().jwks_uri, min_refetch_seconds=5.0)
    await cache.start()
    assert not cache.state().ready
    for _ in range(50):
        with pytest.raises(IdpUnavailable):
            await cache.get_key("r1", "RS256")
    assert len(idp.requests) == 1
    clock.advance(5)
    idp.up = True
    assert (await cache.get_key("r1", "RS256")).kid == "r1"


async def test_a_failed_refresh_keeps_the_last_good_keys() -> None:
    clock = Clock()
    idp = FakeIdp(keys=[rsa_key("r1")])
    cache = cache_for(idp, clock)
    await cache.start()
    good = idp.keys
    idp.keys = []  # an empty set is a failed fetch, not "no keys"
    clock.advance(6)
    with pytest.raises(AuthError):
        await cache.get_key("other", "RS256")
    assert "no usable signing keys" in (cache.state().last_error or "")
    idp.keys = good
    assert (await cache.get_key("r1", "RS256")).kid == "r1"


async def test_private_symmetric_and_encryption_keys_are_never_used() -> None:
    rsa_sig = rsa_key("sig")
    private = rsa_key("private")
    private.public_jwk["d"] = "AQAB"
    enc = rsa_key("enc")
    enc.public_jwk["use"] = "enc"
    oct_key = rsa_key("oct")
    oct_key.public_jwk = {"kty": "oct", "kid": "oct", "k": "c2VjcmV0", "alg": "HS256"}
    idp = FakeIdp(keys=[rsa_sig, private, enc, oct_key])
    cache = cache_for(idp, Clock())
    await cache.start()
    assert cache.state().keys == 1
    for kid, alg in (("private", "RS256"), ("enc", "RS256"), ("oct", "HS256")):
        with pytest.raises(AuthError):
            await cache.get_key(kid, alg)


async def test_keys_must_fit_the_algorithm() -> None:
    rsa = rsa_key("r", declare_alg=False)
    es256, es384, ed = ec_key("e"), ec_key("e384", "ES384"), ed_key("ed")
    idp = FakeIdp(keys=[rsa, es256, es384, ed])
    cache = cache_for(idp, Clock())
    await cache.start()
    assert (await cache.get_key("r", "PS256")).kid == "r"  # no declared alg: any RSA alg
    assert (await cache.get_key("ed", "EdDSA")).kid == "ed"
    for kid, alg in (("e", "RS256"), ("e", "ES384"), ("e384", "ES256"), ("r", "ES256")):
        with pytest.raises(AuthError) as wrong:
            await cache.get_key(kid, alg)
        assert wrong.value.code == "algorithm-not-allowed"
    declared = SigningKey("d", jwt.PyJWK(rsa_key("d").public_jwk), "RS256", "RSA", None)
    assert key_fits(declared, "RS256")
    assert not key_fits(declared, "RS512")  # the JWK says RS256 only
    assert not key_fits(declared, "HS256")


async def test_a_token_without_kid_uses_the_one_key_that_fits() -> None:
    idp = FakeIdp(keys=[rsa_key("r1"), ec_key("e1")])
    cache = cache_for(idp, Clock())
    await cache.start()
    assert (await cache.get_key(None, "ES256")).kid == "e1"
    idp.keys.append(rsa_key("r2"))
    cache2 = cache_for(idp, Clock())
    await cache2.start()
    with pytest.raises(AuthError) as ambiguous:
        await cache2.get_key(None, "RS256")
    assert ambiguous.value.code == "key-unknown"


async def test_a_disabled_cache_never_fetches() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")])
    cache = cache_for(idp, Clock(), enabled=False)
    await cache.start()
    assert cache.state().ready and not cache.state().enabled
    with pytest.raises(AuthError):
        await cache.get_key("r1", "RS256")
    assert idp.requests == []


# -- background retries and the cold-start cost ----------------------------------------------------


async def test_a_cold_cache_heals_in_the_background_without_a_token() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], up=False)
    cache = cache_for(idp, Clock(), background=True, retry_max_seconds=0.2)
    await cache.start()
    try:
        assert not cache.state().ready and cache.state().last_error is not None
        async with asyncio.timeout(30):  # generous: each retry waits at most 0.2 s
            while len(idp.requests) < 3:  # retried while down, no request needed
                await asyncio.sleep(0.05)
            idp.up = True
            while not cache.state().ready:
                await asyncio.sleep(0.05)
        assert cache.state().last_error is None and cache.state().keys == 1
        settled = len(idp.requests)
        await asyncio.sleep(0.5)
        assert len(idp.requests) == settled  # healthy: nothing until the keys are due
    finally:
        await cache.aclose()


async def test_without_background_a_cold_cache_waits_for_a_request() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], up=False)
    cache = cache_for(idp, Clock())
    await cache.start()
    tried = len(idp.requests)
    await asyncio.sleep(0.3)
    assert len(idp.requests) == tried


async def test_a_hung_issuer_costs_a_cold_request_one_deadline_shared_by_all() -> None:
    started: list[str] = []

    async def hung(request: httpx.Request) -> httpx.Response:
        started.append(str(request.url))
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    client = httpx.AsyncClient(transport=httpx.MockTransport(hung))
    clock = Clock()
    cache = JwksCache(name="idp", issuer=ISSUER, client=client, clock=clock, deadline_seconds=0.3)
    async with asyncio.timeout(30):  # without a deadline this would wait for ever
        await cache.start()
        assert "within 0.3 s" in (cache.state().last_error or "")
        assert len(started) == 1  # not one timeout per discovery document
        clock.advance(5.0)  # the refetch interval: the next cold request may fetch again
        results = await asyncio.gather(
            *(cache.get_key("r1", "RS256") for _ in range(20)), return_exceptions=True
        )
    assert all(isinstance(r, IdpUnavailable) for r in results)
    assert len(started) == 2  # twenty cold requests shared one fetch


async def test_the_background_task_outlives_a_long_outage_and_heals() -> None:
    """Regression: the back-off computed 2.0**failures before capping it, so after 1,024 failed
    retries (13 hours at the default cap) the task died of OverflowError and readiness waited
    for a token again; aclose() then re-raised it. A tiny cap makes 1,100 retries quick."""
    idp = FakeIdp(keys=[rsa_key("r1")], up=False)
    cache = cache_for(idp, Clock(), background=True, retry_max_seconds=0.001)
    await cache.start()
    per_fetch = len(idp.requests)  # discovery documents tried by one fetch
    keeper = cache._keeper
    assert keeper is not None
    try:
        async with asyncio.timeout(120):  # generous: each retry waits about a millisecond
            while len(idp.requests) < 1_100 * per_fetch and not keeper.done():
                await asyncio.sleep(0.01)
            assert not keeper.done(), keeper.exception()
            idp.up = True
            while not cache.state().ready:
                await asyncio.sleep(0.01)
    finally:
        await cache.aclose()  # never raises


async def test_the_background_task_survives_an_unexpected_error() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")], up=False)
    cache = cache_for(idp, Clock(), background=True, retry_max_seconds=0.01)
    real_fetch = cache._fetch
    raised = 0

    async def flaky() -> None:
        nonlocal raised
        if raised < 3:
            raised += 1
            raise RuntimeError("a bug")
        await real_fetch()

    await cache.start()
    cache._fetch = flaky  # type: ignore[method-assign]
    keeper = cache._keeper
    assert keeper is not None
    try:
        async with asyncio.timeout(60):
            while raised < 3:
                await asyncio.sleep(0.01)
            idp.up = True
            while not cache.state().ready:
                await asyncio.sleep(0.01)
        assert not keeper.done()
    finally:
        await cache.aclose()


async def test_aclose_logs_a_dead_background_task_instead_of_raising() -> None:
    idp = FakeIdp(keys=[rsa_key("r1")])
    cache = cache_for(idp, Clock())

    async def died() -> None:
        raise OverflowError("math range error")

    cache._keeper = asyncio.ensure_future(died())
    await asyncio.sleep(0)
    await cache.aclose()  # before the fix: OverflowError, and later closers never ran
    assert cache._keeper is None
