"""TokenVerifier on real keys and real pyjwt, with the IdP behind httpx.MockTransport."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from authkit import (
    AUDIENCE,
    ISSUER,
    Clock,
    FakeIdp,
    Key,
    claims,
    client_for,
    ec_key,
    ed_key,
    issuer_config,
    rsa_key,
)
from cryptography.hazmat.primitives import serialization

from gateway.auth.introspect import Introspector
from gateway.auth.jwks import JwksCache
from gateway.auth.principal import MISSING, Principal
from gateway.auth.verify import NOT_A_JWT, NOT_ACCEPTED, TokenVerifier, bearer_token
from gateway.errors import AuthError, IdpUnavailable
from gateway.policy.model import Issuer

NOW = 1_800_000_000.0


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class World:
    """Issuers, their fake IdPs and a verifier over them, all on one clock."""

    def __init__(self, configs: dict[str, Issuer], idps: list[FakeIdp], **kwargs: Any) -> None:
        self.clock = Clock(NOW)
        self.idps = idps
        client = client_for(*idps)
        self.caches = {
            name: JwksCache(
                name=name,
                issuer=cfg.issuer,
                client=client,
                clock=self.clock,
                min_refetch_seconds=5.0,
                enabled=kwargs.pop(f"{name}_keys", True),
            )
            for name, cfg in configs.items()
        }
        self.introspectors = {
            name: Introspector(
                name=name, issuer=cfg, client=client, clock=self.clock, cache_seconds=60
            )
            for name, cfg in configs.items()
            if cfg.introspection is not None
        }
        self.verifier = TokenVerifier(
            configs,
            self.caches,
            introspectors=self.introspectors,
            clock=self.clock,
            leeway=kwargs.pop("leeway", 30.0),
            cache_size=kwargs.pop("cache_size", 10_000),
        )

    async def verify(self, token: str) -> Principal:
        return await self.verifier.verify(token)

    async def code(self, token: str) -> str:
        try:
            await self.verifier.verify(token)
        except (AuthError, IdpUnavailable) as exc:
            return exc.code
        return "ok"


@pytest.fixture
def rsa() -> Key:
    return rsa_key("rsa-1")


@pytest.fixture
def es() -> Key:
    return ec_key("ec-1")


@pytest.fixture
def world(rsa: Key, es: Key) -> World:
    return World({"okta": issuer_config(preset="okta")}, [FakeIdp(keys=[rsa, es])])


async def test_rs256_and_es256_tokens_give_a_principal(world: World, rsa: Key, es: Key) -> None:
    for key in (rsa, es):
        principal = await world.verify(key.sign(claims(now=NOW, uid="00u1")))
        assert principal.issuer == "okta" and principal.iss == ISSUER
        assert principal.subject == "user-1"
        assert principal.client_id == "client-1" and principal.user_id == "00u1"
        assert principal.scopes == {"orders.read"} and principal.groups == {"support"}
        assert principal.expires_at == int(NOW) + 300


@pytest.mark.parametrize("alg", ["PS256", "EdDSA", "ES384"])
async def test_other_algorithms_only_when_configured(alg: str) -> None:
    key = ed_key("k") if alg == "EdDSA" else ec_key("k", "ES384") if alg == "ES384" else None
    key = key or rsa_key("k", "PS256")
    token = key.sign(claims(now=NOW))
    default = World({"i": issuer_config()}, [FakeIdp(keys=[key])])
    assert await default.code(token) == "algorithm-not-allowed"
    configured = World({"i": issuer_config(algorithms=[alg])}, [FakeIdp(keys=[key])])
    assert await configured.code(token) == "ok"


async def test_none_and_hmac_are_never_accepted(world: World, rsa: Key) -> None:
    unsigned = jwt.encode(claims(now=NOW), None, algorithm="none", headers={"kid": "rsa-1"})
    assert await world.code(unsigned) == "algorithm-not-allowed"
    public_pem = rsa.private.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    header = b64({"alg": "HS256", "kid": "rsa-1"})
    body = b64(claims(now=NOW))
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert await world.code(forged) == "algorithm-not-allowed"
    with pytest.raises(ValueError):
        issuer_config(algorithms=["HS256"])
    with pytest.raises(ValueError):
        issuer_config(algorithms=["none"])


async def test_issuer_is_chosen_by_exact_iss() -> None:
    a, b = rsa_key("a"), rsa_key("b")
    other = "https://login.corp.example"
    world = World(
        {"okta": issuer_config(preset="okta"), "corp": issuer_config(other)},
        [FakeIdp(keys=[a]), FakeIdp(issuer=other, keys=[b])],
    )
    assert (await world.verify(a.sign(claims(now=NOW)))).issuer == "okta"
    assert (await world.verify(b.sign(claims(other, now=NOW)))).issuer == "corp"
    assert await world.code(a.sign(claims(ISSUER + "/", now=NOW))) == "issuer-unknown"
    assert await world.code(a.sign(claims("https://IDP.example/oauth2/default", now=NOW))) == (
        "issuer-unknown"
    )
    # corp's key does not sign okta's tokens, even with a kid okta's JWKS lacks
    assert await world.code(b.sign(claims(now=NOW))) == "key-unknown"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"aud": "api://other"}, "audience-mismatch"),
        ({"aud": ["api://other", AUDIENCE]}, "ok"),
        ({"aud": None}, "token-malformed"),
        ({"exp": None}, "token-malformed"),
        ({"sub": None}, "token-malformed"),
        ({"sub": ""}, "token-malformed"),
        ({"sub": 42}, "token-malformed"),
        ({"exp": NOW - 31}, "token-expired"),
        ({"exp": NOW - 29}, "ok"),  # within the 30 s leeway
        ({"nbf": NOW + 29}, "ok"),
        ({"nbf": NOW + 31}, "token-not-yet-valid"),
        ({"iat": NOW + 31}, "token-not-yet-valid"),
        ({"exp": "tomorrow"}, "token-malformed"),
        ({"exp": str(int(NOW) + 300)}, "token-malformed"),
        ({"exp": True}, "token-malformed"),
        ({"iat": "0"}, "token-malformed"),
        ({"nbf": [0]}, "token-malformed"),
        # integers beyond float range (JSON has no limit): malformed, not a 500
        ({"exp": 10**400}, "token-malformed"),
        ({"nbf": 10**400}, "token-malformed"),
        ({"iat": 10**400}, "token-malformed"),
        ({"exp": -(10**400)}, "token-malformed"),
    ],
)
async def test_claim_rules(world: World, rsa: Key, change: dict[str, Any], code: str) -> None:
    token = rsa.sign(claims(now=NOW, **change))
    assert await world.code(token) == code


async def test_leeway_is_configurable(rsa: Key) -> None:
    strict = World({"okta": issuer_config()}, [FakeIdp(keys=[rsa])], leeway=0)
    assert await strict.code(rsa.sign(claims(now=NOW, exp=NOW - 1))) == "token-expired"


async def test_tampered_signature_and_foreign_key(world: World, rsa: Key) -> None:
    header, _payload, signature = rsa.sign(claims(now=NOW)).split(".")
    tampered = f"{header}.{b64(claims(now=NOW, groups=['admin']))}.{signature}"
    assert await world.code(tampered) == "signature-invalid"
    impostor = rsa_key("rsa-1")  # same kid, another key
    assert await world.code(impostor.sign(claims(now=NOW))) == "signature-invalid"


def sign_raw(key: Key, header: str, payload: str | bytes) -> str:
    """A token signed by ``key`` over exactly this header and payload JSON text (pyjwt's encoder
    cannot write a member twice); ``payload`` as bytes: exactly those bytes."""
    parts = (header.encode(), payload if isinstance(payload, bytes) else payload.encode())
    segments = [base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in parts]
    signing_input = ".".join(segments).encode()
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input, key.private)
    return f"{signing_input.decode()}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


HEADER = '{"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}'


def with_member(document: dict[str, Any], extra: str) -> str:
    """``document``'s JSON with ``extra`` (raw JSON members) appended: a member twice."""
    return json.dumps(document)[:-1] + ", " + extra + "}"


@pytest.mark.parametrize(
    "payload",
    [
        with_member(claims(now=NOW, tenant="t1"), '"tenant": "t2"'),
        with_member(claims(now=NOW), '"groups": ["admin"]'),
        with_member(claims(now=NOW), '"sub": "user-2"'),
        with_member(claims(now=NOW), f'"aud": "{AUDIENCE}"'),  # even the same value
        with_member(claims(now=NOW), '"act": {"sub": "a", "sub": "b"}'),  # nested
        with_member(claims(now=NOW), '"tenant": NaN'),
    ],
)
async def test_a_claim_twice_is_refused_not_the_last_one_taken(
    world: World, rsa: Key, payload: str
) -> None:
    """Signed by the issuer's own key: the signature is good, the claims are ambiguous."""
    try:
        await world.verify(sign_raw(rsa, HEADER, payload))
    except AuthError as exc:
        assert exc.code == "token-malformed"
        assert exc.detail.startswith("the token's header or claims are not strict JSON"), exc.detail
    else:
        raise AssertionError("a token with a claim twice was accepted")
    # the same token with each member once verifies (the refusal is the duplicate's)
    once = json.dumps(json.loads(payload.replace("NaN", '"t"')))
    assert await world.code(sign_raw(rsa, HEADER, once)) == "ok"


@pytest.mark.parametrize(
    ("member", "fixed"),
    [('"tenant": "\\ud800"', '"tenant": "t1"'), ('"score": 1e400', '"score": 1.5')],
)
async def test_a_lone_surrogate_or_an_infinite_number_is_malformed(
    world: World, rsa: Key, member: str, fixed: str
) -> None:
    """No UTF-8 writer can write a lone surrogate (the trail, a log line); 1e400 reads as inf."""
    token = sign_raw(rsa, HEADER, with_member(claims(now=NOW), member))
    try:
        await world.verify(token)
    except AuthError as exc:
        assert exc.code == "token-malformed", exc.detail
        assert exc.detail.startswith("the token's header or claims are not strict JSON")
    else:
        raise AssertionError(f"a token with {member} was accepted")
    assert await world.code(sign_raw(rsa, HEADER, with_member(claims(now=NOW), fixed))) == "ok"


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.encode("utf-8", "surrogatepass"),  # the surrogate's own bytes ED A0 80
        lambda text: text.encode("utf-16-le", "surrogatepass"),  # not UTF-8 at all
    ],
    ids=["surrogate-bytes", "utf-16"],
)
async def test_claims_are_utf_8_strictly(world: World, rsa: Key, encode: Any) -> None:
    """RFC 7519: the claims are UTF-8. json.loads of bytes would take a surrogate's raw bytes
    (surrogatepass) or guess UTF-16; the gateway refuses both as malformed."""
    raw = encode(with_member(claims(now=NOW), '"tenant": "\ud800"'))
    try:
        await world.verify(sign_raw(rsa, HEADER, raw))
    except AuthError as exc:
        assert exc.code == "token-malformed", exc.detail
    else:
        raise AssertionError("a token whose claims are not UTF-8 was accepted")


@pytest.mark.parametrize(
    "header",
    [
        '{"alg": "HS256", "alg": "RS256", "kid": "rsa-1"}',
        '{"alg": "RS256", "kid": "other", "kid": "rsa-1"}',
        '{"alg": "RS256", "kid": "rsa-1", "typ": "JWT", "typ": "JWT"}',
    ],
)
async def test_a_header_member_twice_is_refused(world: World, rsa: Key, header: str) -> None:
    token = sign_raw(rsa, header, json.dumps(claims(now=NOW)))
    try:
        await world.verify(token)
    except AuthError as exc:
        assert exc.code == "token-malformed", exc.detail
        assert exc.detail.startswith("the token's header or claims are not strict JSON")
    else:
        raise AssertionError("a token with a header member twice was accepted")
    once = json.dumps(json.loads(header))
    assert await world.code(sign_raw(rsa, once, json.dumps(claims(now=NOW)))) == "ok"


@pytest.mark.parametrize("header", ["jwk", "jku", "x5u", "x5c"])
async def test_key_headers_are_never_used(world: World, header: str) -> None:
    attacker = rsa_key("attacker")
    values = {
        "jwk": attacker.public_jwk,
        "jku": "https://evil.example/keys",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIB"],
    }
    token = attacker.sign(claims(now=NOW), **{header: values[header]})
    assert await world.code(token) == "key-unknown"
    world.idps[0].requests.clear()
    token = attacker.sign(claims(now=NOW), kid="rsa-1", **{header: values[header]})
    assert await world.code(token) == "signature-invalid"
    assert all("evil" not in str(r.url) for r in world.idps[0].requests)


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("eyJ.eyJ.c", "Invalid header padding"),
        (f"{b64({'alg': 'RS256'})}.eyJhIjoi.c2ln", "Invalid payload"),
        ("e30.e30.e30", None),  # decodes, but names no issuer: its own sentence
    ],
)
async def test_a_malformed_tokens_detail_is_the_gateways_sentence(
    world: World, token: str, words: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The 401's detail never carries the JWT library's words (they go to the log)."""
    with caplog.at_level("INFO", logger="spangate.auth"), pytest.raises(AuthError) as refused:
        await world.verify(token)
    assert refused.value.code == "token-malformed"
    if words is None:
        assert refused.value.detail == "the token has no iss claim"
        return
    assert refused.value.detail == NOT_A_JWT
    assert words not in refused.value.detail and words in caplog.text
    assert words not in refused.value.headers["WWW-Authenticate"]


async def test_a_header_pyjwt_refuses_has_a_fixed_detail(
    world: World, rsa: Key, caplog: pytest.LogCaptureFixture
) -> None:
    token = rsa.sign(claims(now=NOW), crit=["urn:example:unknown"], **{"urn:example:unknown": 1})
    with caplog.at_level("INFO", logger="spangate.auth"), pytest.raises(AuthError) as refused:
        await world.verify(token)
    assert (refused.value.code, refused.value.detail) == ("token-malformed", NOT_ACCEPTED)
    assert "urn:example:unknown" in caplog.text  # pyjwt's words, for the operator


async def test_unknown_crit_is_refused(world: World, rsa: Key) -> None:
    token = rsa.sign(claims(now=NOW), crit=["urn:example:unknown"], **{"urn:example:unknown": 1})
    assert await world.code(token) == "token-malformed"


@pytest.mark.parametrize(
    ("typ", "code"),
    [
        (None, "ok"),
        ("JWT", "ok"),
        ("at+jwt", "ok"),
        ("application/at+JWT", "ok"),
        ("id_token+jwt", "token-malformed"),
        ("logout+jwt", "token-malformed"),
        (7, "token-malformed"),
    ],
)
async def test_typ(world: World, rsa: Key, typ: Any, code: str) -> None:
    token = rsa.sign(claims(now=NOW), typ=typ)
    if typ is None:
        assert "typ" not in jwt.get_unverified_header(token)
    assert await world.code(token) == code


@pytest.mark.parametrize("marker", ["nonce", "at_hash", "c_hash", "s_hash"])
async def test_recognisable_id_tokens_are_refused_unless_allowed(rsa: Key, marker: str) -> None:
    id_token = rsa.sign(claims(now=NOW, **{marker: "x"}))
    refusing = World({"okta": issuer_config()}, [FakeIdp(keys=[rsa])])
    with pytest.raises(AuthError, match="ID token") as refused:
        await refusing.verify(id_token)
    assert refused.value.code == "token-malformed"
    allowing = World({"okta": issuer_config(refuse_id_tokens=False)}, [FakeIdp(keys=[rsa])])
    assert await allowing.code(id_token) == "ok"
    # an at+jwt typed token is an access token whatever its claims
    assert await refusing.code(rsa.sign(claims(now=NOW, nonce="x"), typ="at+jwt")) == "ok"


async def test_cache_skips_verification_until_exp(world: World, rsa: Key) -> None:
    token = rsa.sign(claims(now=NOW, exp=NOW + 5000))
    first = await world.verify(token)
    world.idps[0].up = False
    world.clock.advance(4000)  # past refresh + stale (300 + 3600 s): no usable keys any more
    assert await world.code(rsa.sign(claims(now=NOW, sub="new"))) == "idp-unavailable"
    assert await world.verify(token) is first  # no signature work, no keys needed
    world.clock.advance(1000)  # at exp the entry is gone and verification runs again
    assert await world.code(token) == "idp-unavailable"


async def test_cache_is_bounded(rsa: Key) -> None:
    world = World({"okta": issuer_config()}, [FakeIdp(keys=[rsa])], cache_size=2)
    tokens = [rsa.sign(claims(now=NOW, sub=f"user-{i}", exp=NOW + 5000)) for i in range(3)]
    for token in tokens:
        await world.verify(token)
    world.idps[0].up = False
    world.clock.advance(4000)
    assert await world.code(tokens[0]) == "idp-unavailable"  # evicted, the oldest
    assert await world.code(tokens[2]) == "ok"


async def test_generic_claim_mapping_and_nested_paths() -> None:
    key = rsa_key("k")
    cfg = issuer_config(claims={"groups": "realm_access.roles", "scopes": "scope", "user": "email"})
    world = World({"corp": cfg}, [FakeIdp(keys=[key])])
    token = key.sign(
        claims(
            now=NOW,
            scp=None,
            cid=None,
            groups=None,
            scope="orders.read orders.write",
            azp="web-app",
            email="a@example.com",
            realm_access={"roles": ["support", "ops"]},
        )
    )
    principal = await world.verify(token)
    assert principal.scopes == {"orders.read", "orders.write"}
    assert principal.groups == {"support", "ops"}
    assert principal.client_id == "web-app"
    assert principal.user_id == "a@example.com"
    array = await world.verify(key.sign(claims(now=NOW, scp=None, scope=["a", "b"])))
    assert array.scopes == {"a", "b"}


async def test_act_is_in_the_principal(world: World, rsa: Key) -> None:
    act = {"sub": "agent-7", "act": {"sub": "orchestrator"}}
    principal = await world.verify(rsa.sign(claims(now=NOW, act=act)))
    assert principal.act == act
    assert principal.claim("act.sub") == "agent-7"  # the path roles use (claims: {act.sub: ...})
    assert principal.claim("act.act.sub") == "orchestrator"
    plain = await world.verify(rsa.sign(claims(now=NOW, sub="user-2")))
    assert plain.act is None
    assert principal.delegated and not plain.delegated
    assert principal.actors == ("agent-7", "orchestrator")


async def test_a_flat_act_dot_sub_claim_is_no_delegation(world: World, rsa: Key) -> None:
    # a flat claim literally named act.sub (or act.act.sub, may_act.sub) never stands in for the
    # nested act object: no actor, no delegation, for roles, binding and the audit trail alike
    flat = {"act.sub": "order-agent", "act.act.sub": "x", "may_act.sub": "y", "org.unit": "z"}
    principal = await world.verify(rsa.sign(claims(now=NOW, **flat)))
    assert principal.claim("act.sub") is MISSING
    assert principal.claim("act.act.sub") is MISSING
    assert principal.claim("may_act.sub") is MISSING
    assert principal.claim("org.unit") == "z"  # other flat dotted claims still answer
    assert not principal.delegated and principal.act is None and principal.actors == ()
    # nested act without sub: still no fallback to the flat claim
    partly = await world.verify(rsa.sign(claims(now=NOW, act={"client_id": "c"}, **flat)))
    assert partly.delegated and partly.claim("act.sub") is MISSING


@pytest.mark.parametrize(
    "act", ["order-agent", ["order-agent"], None, 7, {"sub": "a", "act": "earlier-agent"}]
)
async def test_an_act_claim_that_is_no_object_is_refused(
    world: World, rsa: Key, act: Any
) -> None:
    token = {**claims(now=NOW), "act": act}  # claims() drops None: act is null here
    assert await world.code(rsa.sign(token)) == "token-malformed"


async def test_an_introspected_act_that_is_no_object_is_refused() -> None:
    idp = FakeIdp(issuer="https://one.example")
    intro = {"introspection": {"client_id": "gw", "client_secret": "s"}}
    world = World({"one": issuer_config("https://one.example", **intro)}, [idp])
    idp.answers["tok"] = {"active": True, "sub": "svc", "act": "agent"}
    assert await world.code("tok") == "token-malformed"


# -- Okta org authorization servers ---------------------------------------------------------

ORG = "https://idp.example"


def org_world(*, introspect: bool) -> tuple[World, Key, FakeIdp]:
    key = rsa_key("org-key")
    org = issuer_config(
        ORG,
        preset="okta",
        **({"introspection": {"client_id": "gw", "client_secret": "s"}} if introspect else {}),
    )
    org_idp = FakeIdp(issuer=ORG, keys=[key])
    world = World({"org": org}, [org_idp], org_keys=False)
    return world, key, org_idp


async def test_org_server_tokens_without_introspection_are_refused_with_advice() -> None:
    world, key, idp = org_world(introspect=False)
    with pytest.raises(AuthError, match="custom authorization server") as refused:
        await world.verify(key.sign(claims(ORG, now=NOW)))
    assert refused.value.code == "org-server-token"
    assert idp.requests == []  # never validated locally


async def test_org_server_tokens_go_to_introspection() -> None:
    world, key, idp = org_world(introspect=True)
    token = key.sign(claims(ORG, now=NOW))
    idp.answers[token] = {
        "active": True,
        "sub": "00u1",
        "scope": "orders.read",
        "client_id": "c",
        "iss": ORG,
        "aud": AUDIENCE,
        "exp": NOW + 60,
    }
    principal = await world.verify(token)
    assert principal.subject == "00u1" and principal.scopes == {"orders.read"}
    assert principal.introspected  # what the shadow and the audit trail read its names by
    assert idp.jwks_fetches == 0 and idp.introspections == 1
    other = key.sign(claims(ORG, now=NOW, sub="x"))
    assert await world.code(other) == "token-inactive"


async def test_org_server_tokens_must_look_like_a_signed_jwt_before_a_call() -> None:
    """Regression: any three-part string naming the org server went to its budget and its IdP."""
    world, key, idp = org_world(introspect=True)
    body = b64(claims(ORG, now=NOW))
    junk = [
        f"{b64({'alg': 'RS256'})}.{body}.",  # no signature
        f"{b64({'alg': 'none'})}.{body}.c2ln",  # unsigned
        f"{b64({'alg': 'HS256'})}.{body}.c2ln",  # an algorithm the issuer does not use
        f"{b64({'alg': 'RS256'})}.{body}.sig+/~",  # not base64url
        f"{b64({'alg': 'RS256', 'pad': 'x' * 20_000})}.{body}.c2ln",  # larger than a token
    ]
    codes = [await world.code(token) for token in junk]
    malformed, not_allowed = "token-malformed", "algorithm-not-allowed"
    assert codes == [malformed, not_allowed, not_allowed, malformed, malformed]
    assert idp.introspections == 0
    # all but the one pyjwt cannot even decode (refused before the issuer is known)
    assert world.introspectors["org"].refused["format"] == len(junk) - 1
    assert world.verifier.refusals["format"] == 0  # those are this issuer's, not opaque tokens
    good = key.sign(claims(ORG, now=NOW))
    assert await world.code(good) == "token-inactive"  # a JWT of the right shape is asked
    assert idp.introspections == 1


async def test_an_org_server_token_next_to_a_custom_server_gets_advice(world: World) -> None:
    key = rsa_key("org")
    with pytest.raises(AuthError, match="custom authorization server") as refused:
        await world.verify(key.sign(claims("https://idp.example", now=NOW)))
    assert refused.value.code == "org-server-token"
    assert await world.code(key.sign(claims("https://elsewhere.example", now=NOW))) == (
        "issuer-unknown"
    )


# -- opaque tokens ----------------------------------------------------------------------------


async def test_opaque_tokens_without_introspection_are_malformed(world: World) -> None:
    assert await world.code("2YotnFZFEjr1zCsicMWpAA") == "token-malformed"


async def test_opaque_tokens_try_introspecting_issuers_in_policy_order() -> None:
    first = FakeIdp(issuer="https://one.example")
    second = FakeIdp(issuer="https://two.example")
    intro = {"introspection": {"client_id": "gw", "client_secret": "s"}}
    world = World(
        {
            "plain": issuer_config("https://plain.example"),
            "one": issuer_config("https://one.example", **intro),
            "two": issuer_config("https://two.example", **intro),
        },
        [FakeIdp(issuer="https://plain.example"), first, second],
    )
    second.answers["tok-2-0123456789"] = {"active": True, "sub": "svc", "act": {"sub": "agent"}}
    principal = await world.verify("tok-2-0123456789")
    assert principal.issuer == "two" and principal.act == {"sub": "agent"}
    assert (first.introspections, second.introspections) == (1, 1)
    assert await world.code("unknown-token-0123456789") == "token-inactive"
    first.up = False
    assert await world.code("another-token-0123456789") == "idp-unavailable"  # one was not asked


async def test_opaque_tokens_that_fit_no_issuer_format_are_refused_without_a_call() -> None:
    idp = FakeIdp(issuer="https://one.example")
    hexa = FakeIdp(issuer="https://two.example")
    world = World(
        {
            "one": issuer_config(
                "https://one.example",
                introspection={
                    "client_id": "gw",
                    "client_secret": "s",
                    "token_min_length": 43,
                    "token_max_length": 43,
                    "token_charset": "base64url",
                },
            ),
            "two": issuer_config(
                "https://two.example",
                introspection={"client_id": "gw", "client_secret": "s", "token_charset": "hex"},
            ),
        },
        [idp, hexa],
    )
    junk = ["short", "x" * 42, "x" * 44, "x" * 2000, "A" * 41 + "+/", "xyz=" * 11]
    for token in junk:
        assert await world.code(token) == "token-malformed", token
    assert (idp.introspections, hexa.introspections) == (0, 0)
    # counted once per token, by the verifier, not once per issuer the token does not fit
    assert world.verifier.refusals["format"] == len(junk)
    assert world.introspectors["one"].refused["format"] == 0
    assert world.introspectors["two"].refused["format"] == 0
    try:
        await world.verify("short")
    except AuthError as refused:
        assert "'one': 43 base64url characters" in refused.detail
    # a fitting token is asked, of the issuers whose format it fits only
    assert await world.code("G" * 43) == "token-inactive"
    assert (idp.introspections, hexa.introspections) == (1, 0)
    assert await world.code("0123456789abcdef0123456789abcdef") == "token-inactive"
    assert (idp.introspections, hexa.introspections) == (1, 1)


@pytest.mark.parametrize(
    "cnf", [{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, {"x5t#S256": "bwcK0esc3A"}, {}]
)
async def test_sender_constrained_tokens_are_refused(
    world: World, rsa: Key, cnf: dict[str, str]
) -> None:
    with pytest.raises(AuthError) as refused:
        await world.verify(rsa.sign(claims(now=NOW, cnf=cnf)))
    assert refused.value.code == "token-sender-constrained"
    assert "does not verify DPoP or mutual-TLS" in refused.value.detail


# -- the Authorization header -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "in_query", "code"),
    [
        ([], False, "token-missing"),
        (["Bearer a.b.c", "Bearer a.b.c"], False, "token-malformed"),
        (["Bearer abc"], True, "token-malformed"),
        (["Basic dXNlcjpwYXNz"], False, "token-malformed"),
        (["Bearer "], False, "token-malformed"),
        (["Bearer abc def"], False, "token-malformed"),
        (['Bearer abc"def'], False, "token-malformed"),
        (["Bearer " + "a" * 20_000], False, "token-malformed"),
        (["DPoP a.b.c"], False, "token-sender-constrained"),
    ],
)
def test_bearer_token_refusals(headers: list[str], in_query: bool, code: str) -> None:
    with pytest.raises(AuthError) as refused:
        bearer_token(headers, token_in_query=in_query, max_bytes=16_384)
    assert refused.value.code == code
    challenge = refused.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="spangate"')
    assert ('error="invalid_token"' in challenge) == (code != "token-missing")


def test_bearer_token_accepts_b64token_syntax() -> None:
    assert (
        bearer_token(["bearer  abc-._~+/=="], token_in_query=False, max_bytes=100) == "abc-._~+/=="
    )


def test_challenge_cannot_be_used_for_header_injection() -> None:
    error = AuthError('tokens of issuer "x\r\nSet-Cookie: a=b\\" é', code="issuer-unknown")
    challenge = error.headers["WWW-Authenticate"]
    assert "\r" not in challenge and "\n" not in challenge and "é" not in challenge
    description = challenge.split('error_description="', 1)[1]
    assert description.count('"') == 1 and description.endswith('"')


def test_time_checks_live_in_times_only() -> None:
    """check_times moved to gateway.auth.times; verify does not re-export it."""
    from gateway.auth import times, verify

    assert "check_times" not in verify.__all__ and "check_times" in times.__all__
