"""RFC 7662 introspection: authlib client authentication, answer checks, caching, failures."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from authkit import AUDIENCE, ISSUER, Clock, FakeIdp, client_for, issuer_config

from gateway.auth.introspect import Introspector
from gateway.errors import AuthError, IdpUnavailable

NOW = 1_800_000_000.0


def introspector(
    idp: FakeIdp, clock: Clock, *, cache_seconds: float = 60.0, **config: Any
) -> Introspector:
    settings = {"client_id": "gw", "client_secret": "s3cret:/+", **config}
    cfg = issuer_config(idp.issuer, preset="okta", introspection=settings)
    return Introspector(
        name="okta", issuer=cfg, client=client_for(idp), clock=clock, cache_seconds=cache_seconds
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
