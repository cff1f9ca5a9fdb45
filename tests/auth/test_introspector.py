"""RFC 7662 introspection: authlib client authentication, answer checks, caching, failures."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from authkit import AUDIENCE, ISSUER, Clock, FakeIdp, client_for, issuer_config

from gateway.auth.answers import AnswerCache
from gateway.auth.introspect import Introspector
from gateway.auth.throttle import TokenBucket, retry_after_seconds
from gateway.errors import AuthError, IdpUnavailable, IntrospectionBusy

NOW = 1_800_000_000.0


def introspector(
    idp: FakeIdp,
    clock: Clock,
    *,
    cache_seconds: float = 60.0,
    options: dict[str, Any] | None = None,
    **config: Any,
) -> Introspector:
    settings = {"client_id": "gw", "client_secret": "s3cret:/+", **config}
    cfg = issuer_config(idp.issuer, preset="okta", introspection=settings)
    return Introspector(
        name="okta",
        issuer=cfg,
        client=client_for(idp),
        clock=clock,
        cache_seconds=cache_seconds,
        **(options or {}),
    )


def active(**extra: Any) -> dict[str, Any]:
    return {
        "active": True,
        "sub": "u1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "scope": "orders.read",
        "client_id": "c1",
        **extra,
    }


def posts(idp: FakeIdp) -> list[httpx.Request]:
    return [r for r in idp.requests if r.method == "POST"]


async def test_client_secret_basic_and_the_request() -> None:
    idp = FakeIdp(answers={"tok": active()})
    checked = await introspector(idp, Clock(NOW)).introspect("tok")
    assert checked is not None and checked["sub"] == "u1" and "active" not in checked
    (request,) = posts(idp)
    assert str(request.url) == idp.introspection_uri  # from discovery
    scheme, _, value = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == "gw:s3cret:/+"
    form = parse_qs(request.content.decode())
    assert form == {"token": ["tok"], "token_type_hint": ["access_token"]}
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"


async def test_client_secret_post() -> None:
    idp = FakeIdp(answers={"tok": active()})
    await introspector(idp, Clock(NOW), auth_method="client_secret_post").introspect("tok")
    (request,) = posts(idp)
    assert "authorization" not in request.headers
    form = parse_qs(request.content.decode())
    assert form["client_id"] == ["gw"] and form["client_secret"] == ["s3cret:/+"]
    assert form["token"] == ["tok"]


async def test_endpoint_explicit_or_okta_default() -> None:
    idp = FakeIdp(answers={"tok": active()}, introspection_endpoint=False)
    await introspector(idp, Clock(NOW)).introspect(
        "tok"
    )  # discovery names none: {issuer}/v1/introspect
    assert str(posts(idp)[0].url) == idp.introspection_uri
    explicit = FakeIdp(answers={"tok": active()})
    await introspector(explicit, Clock(NOW), endpoint=explicit.introspection_uri).introspect("tok")
    assert [r.method for r in explicit.requests] == ["POST"]  # no discovery


async def test_active_answers_are_cached_until_ttl_or_exp() -> None:
    clock = Clock(NOW)
    idp = FakeIdp(answers={"tok": active(exp=NOW + 100)})
    intro = introspector(idp, clock, cache_seconds=60)
    await intro.introspect("tok")
    await intro.introspect("tok")
    assert idp.introspections == 1
    clock.advance(60)  # the TTL
    await intro.introspect("tok")
    assert idp.introspections == 2
    clock.advance(40)  # exp (NOW + 100) comes before the next TTL
    idp.answers["tok"] = {"active": False}
    assert await intro.introspect("tok") is None
    assert idp.introspections == 3


async def test_inactive_answers_are_cached_and_zero_disables_the_cache() -> None:
    clock = Clock(NOW)
    idp = FakeIdp()
    cached = introspector(idp, clock)
    for _ in range(5):
        assert await cached.introspect("bad") is None
    assert idp.introspections == 1
    uncached = introspector(idp, clock, cache_seconds=0)
    idp.answers["tok"] = active()
    assert await uncached.introspect("tok") is not None
    idp.answers["tok"] = {"active": False}  # revoked
    assert await uncached.introspect("tok") is None


async def test_concurrent_calls_for_one_token_share_one_request() -> None:
    idp = FakeIdp(answers={"tok": active()})
    intro = introspector(idp, Clock(NOW), cache_seconds=0)
    results = await asyncio.gather(*(intro.introspect("tok") for _ in range(50)))
    assert all(r is not None for r in results)
    assert idp.introspections == 1


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (active(iss="https://other.example"), "issuer-unknown"),
        (active(aud="api://other"), "audience-mismatch"),
        (active(aud=["api://other", AUDIENCE]), None),
        (active(exp=NOW - 31), "token-expired"),
        (active(nbf=NOW + 31), "token-not-yet-valid"),
        (active(token_type="refresh_token"), "token-malformed"),  # noqa: S106
        ({"active": True, "client_id": "svc"}, None),  # subject: the client
        ({"active": True}, "token-malformed"),
        # times beyond float range or not numbers: malformed, not a 500
        (active(exp=10**400), "token-malformed"),
        (active(nbf=10**400), "token-malformed"),
        (active(iat=10**400), "token-malformed"),
        (active(exp="tomorrow"), "token-malformed"),
        (active(cnf={"x5t#S256": "bwcK0esc3A"}), "token-sender-constrained"),  # RFC 8705
        (active(cnf={"jkt": "0ZcOCORZNYy"}), "token-sender-constrained"),  # RFC 9449
    ],
)
async def test_active_answers_are_checked(answer: dict[str, Any], code: str | None) -> None:
    idp = FakeIdp(answers={"tok": answer})
    intro = introspector(idp, Clock(NOW))
    if code is None:
        assert await intro.introspect("tok") is not None
        return
    with pytest.raises(AuthError) as refused:
        await intro.introspect("tok")
    assert refused.value.code == code


@pytest.mark.parametrize("failure", ["down", "401", "500", "not-json", "no-active"])
async def test_an_unusable_endpoint_is_503(failure: str) -> None:
    idp = FakeIdp(answers={"tok": active()})
    intro = introspector(idp, Clock(NOW), endpoint=idp.introspection_uri)
    if failure == "down":
        idp.up = False
    elif failure in ("401", "500"):
        idp.introspect_status = int(failure)
    else:
        idp.answers["tok"] = {"whatever": 1} if failure == "no-active" else "x"  # type: ignore[assignment]
    with pytest.raises(IdpUnavailable) as down:
        await intro.introspect("tok")
    assert down.value.status == 503 and "Retry-After" in down.value.headers
    assert intro.state().last_error is not None
    idp.up, idp.introspect_status, idp.answers["tok"] = True, 200, active()
    assert await intro.introspect("tok") is not None  # failures are not cached


@pytest.mark.parametrize("error", ["unsupported_token_type", "invalid_token"])
async def test_a_400_refusing_the_token_means_inactive(error: str) -> None:
    idp = FakeIdp(introspect_status=400, introspect_error=error)
    intro = introspector(idp, Clock(NOW))
    assert await intro.introspect("a.jwt.token") is None
    assert await intro.introspect("a.jwt.token") is None
    assert idp.introspections == 1  # cached like any inactive answer
    idp.introspect_error = "invalid_request"
    with pytest.raises(IdpUnavailable):
        await introspector(idp, Clock(NOW)).introspect("a.jwt.token")


# -- flood protection: budget, concurrency, back-off, separate caches ---------------------------


async def test_the_rate_budget_refuses_without_calling_and_cached_tokens_keep_working() -> None:
    mono = Clock(0.0)
    idp = FakeIdp(answers={"good": active()})
    intro = introspector(idp, Clock(NOW), options={"rate": 1.0, "burst": 3, "monotonic": mono})
    assert await intro.introspect("good") is not None  # one call of the burst
    busy = 0
    for i in range(20):
        try:
            assert await intro.introspect(f"random-{i}") is None
        except IntrospectionBusy as exc:
            assert exc.code == "introspection-busy" and exc.status == 503
            assert int(exc.headers["Retry-After"]) >= 1
            busy += 1
    assert idp.introspections == 3 and busy == 18
    assert await intro.introspect("good") is not None  # a cache hit, budget or not
    assert idp.introspections == 3
    mono.advance(2.0)  # two more calls' worth
    results = [await _code(intro, f"later-{i}") for i in range(4)]
    assert results == ["inactive", "inactive", "introspection-busy", "introspection-busy"]
    state = intro.state()
    assert state.refused["rate"] == 20 and state.calls_by_result["inactive"] == 4
    assert state.cache_hits == 1 and state.calls == 5


async def _code(intro: Introspector, token: str) -> str:
    try:
        return "active" if await intro.introspect(token) is not None else "inactive"
    except IdpUnavailable as exc:
        return exc.code


async def test_calls_in_flight_are_bounded() -> None:
    release = asyncio.Event()
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return httpx.Response(200, json={"active": False})

    cfg = issuer_config(
        ISSUER,
        introspection={"client_id": "gw", "client_secret": "s", "endpoint": ISSUER + "/i"},
    )
    intro = Introspector(
        name="okta",
        issuer=cfg,
        client=httpx.AsyncClient(transport=httpx.MockTransport(slow)),
        max_concurrency=2,
        rate=1000.0,
        burst=1000,
    )
    tasks = [asyncio.ensure_future(_code(intro, f"token-{i}")) for i in range(10)]
    await asyncio.sleep(0.05)
    assert intro.state().in_flight == 4  # 2 calling, 2 waiting for a slot
    release.set()
    codes = await asyncio.gather(*tasks)
    assert codes.count("inactive") == 4 and codes.count("introspection-busy") == 6
    assert peak == 2 and intro.state().refused["concurrency"] == 6
    assert await _code(intro, "after") == "inactive"  # slots are given back


class _TooManyRequests:
    """A real HTTP server on a free loopback port: an introspection endpoint that answers a
    known token active until told to answer 429 (with or without Retry-After)."""

    def __init__(self) -> None:
        self.calls = 0
        self.mode = "ok"  # or "429", "429-no-retry-after"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.calls += 1
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                if owner.mode.startswith("429"):
                    self.send_response(429)
                    if owner.mode == "429":
                        self.send_header("Retry-After", "30")
                    body = b'{"error": "too_many_requests"}'
                else:
                    good = form.get("token") == ["good-token-0123456789"]
                    answer = active(iss=f"http://127.0.0.1:{owner.port}")
                    body = json.dumps(answer if good else {"active": False}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_429_stops_calls_until_its_back_off_ends() -> None:
    server = _TooManyRequests()
    mono = Clock(0.0)
    base = f"http://127.0.0.1:{server.port}"
    cfg = issuer_config(
        base,
        introspection={"client_id": "gw", "client_secret": "s", "endpoint": base + "/introspect"},
    )
    intro = Introspector(
        name="okta",
        issuer=cfg,
        client=httpx.AsyncClient(timeout=10),
        clock=lambda: NOW,
        monotonic=mono,
    )
    try:
        assert await intro.introspect("good-token-0123456789") is not None
        server.mode = "429"
        with pytest.raises(IdpUnavailable) as throttled:
            await intro.introspect("random-token-1")
        assert throttled.value.code == "idp-unavailable"
        assert throttled.value.headers["Retry-After"] == "30"  # the IdP's own
        assert server.calls == 2
        for i in range(20):  # during the back-off: refused without a call
            with pytest.raises(IdpUnavailable) as waiting:
                await intro.introspect(f"random-token-{i + 2}")
            assert int(waiting.value.headers["Retry-After"]) <= 30
        assert server.calls == 2
        assert await intro.introspect("good-token-0123456789") is not None  # cached
        assert intro.state().refused["backoff"] == 20
        assert intro.state().calls_by_result["throttled"] == 1

        mono.advance(30.5)
        server.mode = "429-no-retry-after"  # then exponential: 2 s (the second 429 in a row)
        with pytest.raises(IdpUnavailable) as again:
            await intro.introspect("random-token-a")
        assert again.value.headers["Retry-After"] == "2" and server.calls == 3
        mono.advance(1.0)
        with pytest.raises(IdpUnavailable):
            await intro.introspect("random-token-b")
        assert server.calls == 3
        mono.advance(1.5)
        with pytest.raises(IdpUnavailable) as third:
            await intro.introspect("random-token-c")
        assert third.value.headers["Retry-After"] == "4" and server.calls == 4

        mono.advance(4.5)
        server.mode = "ok"
        assert await intro.introspect("random-token-d") is None  # inactive: back to normal
        assert server.calls == 5 and intro.state().backoff_seconds == 0
    finally:
        server.close()


def test_inactive_answers_cannot_evict_active_ones() -> None:
    cache = AnswerCache(max_active=2, max_inactive=3)
    cache.put(b"a1", {"active": True}, until=100.0)
    cache.put(b"a2", {"active": True}, until=100.0)
    for i in range(1000):
        cache.put(f"junk-{i}".encode(), None, until=100.0)
    assert cache.sizes() == (2, 3)
    assert cache.get(b"a1", 50.0) == (True, {"active": True})
    assert cache.get(b"a2", 50.0) == (True, {"active": True})
    assert cache.get(b"junk-0", 50.0) == (False, None)  # evicted: LRU
    assert cache.get(b"junk-999", 50.0) == (True, None)  # cached inactive
    assert cache.get(b"a1", 100.0) == (False, None)  # expired
    cache.put(b"a2", None, until=200.0)  # revoked: one answer per token
    assert cache.get(b"a2", 150.0) == (True, None) and cache.sizes() == (0, 3)


async def test_a_flood_of_unknown_tokens_keeps_active_answers_cached() -> None:
    idp = FakeIdp(answers={"good": active()})
    intro = introspector(
        idp,
        Clock(NOW),
        options={"max_entries": 5, "max_inactive_entries": 5, "rate": 1e6, "burst": 10_000},
    )
    assert await intro.introspect("good") is not None
    for i in range(200):
        assert await intro.introspect(f"junk-{i}") is None
    assert idp.introspections == 201
    assert await intro.introspect("good") is not None
    assert idp.introspections == 201  # still cached
    state = intro.state()
    assert (state.cached_active, state.cached_inactive) == (1, 5)


def test_retry_after_values() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("9" * 40) == 10.0**9


def test_token_bucket() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(rate=2.0, burst=2, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.5]
    clock.advance(0.5)
    assert bucket.take() == 0.0 and bucket.take() == 0.5
    clock.advance(100)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.5]  # never more than the burst


async def test_discovery_of_a_hung_issuer_is_shared_and_bounded_by_one_deadline() -> None:
    started: list[str] = []

    async def hung(request: httpx.Request) -> httpx.Response:
        started.append(str(request.url))
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    cfg = issuer_config(ISSUER, introspection={"client_id": "gw", "client_secret": "s"})
    intro = Introspector(
        name="okta",
        issuer=cfg,
        client=httpx.AsyncClient(transport=httpx.MockTransport(hung)),
        deadline_seconds=0.3,
    )
    async with asyncio.timeout(30):  # without a deadline: for ever
        codes = await asyncio.gather(*(_code(intro, f"token-{i}") for i in range(5)))
    assert codes == ["idp-unavailable"] * 5
    assert len(started) == 1  # one discovery for all five, not one per metadata document
    assert "within 0.3 s" in (intro.state().last_error or "")
