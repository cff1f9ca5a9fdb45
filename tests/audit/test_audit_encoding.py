"""The audit event's encoding on the request path gives the bytes ``json.dumps`` gives.

Bounding an event encodes its top-level members with a C encoder built once (``chain``), blocks
that calls repeat are built once and shared (``shared``), and ``_sent`` compares plain values
without encoding them. Each is checked here against the plain way, ``json.dumps`` with the
canonical settings, for the same values, hostile ones included (NaN, lone surrogates, keys that
are not strings, huge integers, deep nesting), and on whole events, built with and without the
shared blocks, sealed and hashed.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit import chain as chain_module
from gateway.audit import event as event_module
from gateway.audit import shared
from gateway.audit.bounds import Bounds
from gateway.audit.chain import Chain, encode_members, encoded_size, line_text, members_size
from gateway.audit.event import CallRecord, build_event_encoded
from gateway.auth.principal import Principal
from gateway.policy.bind import Bound
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.load import load_policy
from gateway.spanner.results import Result, to_json

REPO = Path(__file__).resolve().parents[2]
CAUGHT = (UnicodeError, ValueError, TypeError, RecursionError)  # what bounding and sealing catch


def dumps(value: Any) -> str:
    """The canonical JSON text as it always was: ``json.dumps`` with the chain's settings."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def old_member(value: Any) -> bytes | type[BaseException]:
    try:
        return dumps(value).encode()
    except CAUGHT as exc:
        return type(exc)


def new_member(value: Any) -> bytes | type[BaseException]:
    try:
        members = encode_members({"v": value})
    except CAUGHT as exc:
        return type(exc)
    assert members is not None
    return members["v"]


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Number(float):
    pass


SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80\ud800"])
BREAKS = st.text("a\"\\\n\x00\x1f\x7f\x85\u2028\u2029\u00e9\U0001f600", max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**64) - 1, 10**40])
    | st.integers(4301, 4400).map(lambda n: 10**n)  # too many digits to write
    | st.floats()  # NaN and the infinities included
    | st.sampled_from([0.0, -0.0, 1e-7, 5e-324, 1.7976931348623157e308, 1e16, 0.1 + 0.2])
    | st.text()
    | BREAKS
    | SURROGATES
    | st.sampled_from([Colour.RED, Text("t\u2028"), Number(2.5), True, False])
)
keys = (
    st.text(max_size=4)
    | BREAKS
    | SURROGATES
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=4) | BREAKS, inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=3)  # keys that are not strings, mixed types
    ),
    max_leaves=16,
)


def test_the_fast_encoder_is_the_one_in_use() -> None:
    """On CPython the C encoder is built once; were it not, every test here would compare the
    plain path with itself."""
    if getattr(json.encoder, "c_make_encoder", None) is None:
        pytest.skip("no C encoder in this interpreter")
    assert chain_module._encode is not chain_module._ENCODER.encode


@given(values)
def test_members_encode_as_json_dumps_does(value: Any) -> None:
    assert new_member(value) == old_member(value)


def outcome(encode: Any, value: Any) -> Any:
    try:
        return encode(value)
    except CAUGHT as exc:
        return type(exc)


OTHER_ENCODERS = [
    json.JSONEncoder(),
    json.JSONEncoder(sort_keys=True, ensure_ascii=True, allow_nan=True, separators=(",", ": ")),
    json.JSONEncoder(skipkeys=True, indent=1),
    json.JSONEncoder(skipkeys=True, sort_keys=True),
]


@given(values)
def test_an_encoder_built_once_encodes_as_its_json_encoder(value: Any) -> None:
    """The arguments are the JSONEncoder's, whatever its settings (only the chain's are used)."""
    for encoder in OTHER_ENCODERS:
        assert outcome(chain_module._make_encode(encoder), value) == outcome(encoder.encode, value)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        [1, float("inf")],
        {"a": -float("inf")},
        "\ud800",
        {"k\udfff": 1},
        {1: "a", 2.5: "b", False: "c"},  # keys that are not strings: as strings
        {None: "d", "e": 1},  # keys that do not sort: TypeError
        {2: "a", 10: "b"},  # sorted as numbers before they become strings
        {"a": 1, 2: "b"},  # keys that do not sort: TypeError
        {(1, 2): "tuple key"},
        10**4400,
        [10**4400],
        2**200,
        {1, 2},
        b"bytes",
        Decimal("1.5"),
        object(),
        Colour.RED,
        {"e": Colour.RED, "t": Text("\u2029"), "n": Number(0.5)},
        ("a", ["b", ("c",)]),
        "\x85\u2028\u2029",
    ],
    ids=lambda v: type(v).__name__,
)
def test_hostile_values_encode_or_fail_alike(value: Any) -> None:
    assert new_member(value) == old_member(value)


def test_deep_nesting_fails_alike() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert new_member(deep) is RecursionError and old_member(deep) is RecursionError
    nested: Any = {}
    for _ in range(100_000):
        nested = {"a": nested}
    assert new_member(nested) is RecursionError and old_member(nested) is RecursionError


def test_a_value_that_holds_itself_is_refused_by_both() -> None:
    """The only difference: without markers a cycle is a RecursionError, not a ValueError;
    both are among what bounding and sealing catch (an event never holds one)."""
    loop: list[Any] = []
    loop.append(loop)
    assert new_member(loop) is RecursionError
    assert old_member(loop) is ValueError
    event: dict[str, Any] = {"a": {}}
    event["a"]["self"] = event["a"]
    assert new_member(event) in CAUGHT and old_member(event) in CAUGHT


def test_an_encoder_that_fails_leaves_nothing_behind() -> None:
    """A failed encode (the markers of a shared encoder would keep its containers) does not
    change the next one of the same objects."""
    inner = {"x": 1}
    assert new_member([inner, float("nan")]) is ValueError
    assert new_member([inner, inner]) == b'[{"x":1},{"x":1}]'


def test_keys_that_are_not_strings_at_the_top_are_left_to_sealing() -> None:
    assert encode_members({1: "one", "v": float("nan")}) is None  # type: ignore[dict-item]


@given(st.dictionaries(st.text("ab\x85\u2028\u2029\u00e9", max_size=3), values, max_size=6))
def test_members_size_is_the_size_of_the_line(event: dict[str, Any]) -> None:
    try:
        members = encode_members(event)
    except CAUGHT:
        return
    assert members is not None
    assert members_size(members) == encoded_size(event)
    assert members_size(members) == sum(
        len(line_text(dumps(k) + ":").encode()) + len(line_text(v.decode()).encode())
        for k, v in members.items()
    ) + 1 + max(len(members), 1)


def test_members_size_counts_each_members_line_breaks() -> None:
    event = {"a": "\x85", "b": ["\u2028", "\u2029"], "c": {"\u2028": "x\x85"}, "d": "é"}
    members = encode_members(event)
    assert members is not None
    assert members_size(members) == encoded_size(event) == len(line_text(dumps(event)).encode())


# -- _sent: what the caller sent, where coerce changed it --------------------------------------
def old_sent(raw: Any, value: Any) -> Any:
    """``_sent``'s rule as it was: recorded (``to_json`` of it) when the canonical texts differ."""

    def canonical(v: Any) -> str:
        return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)

    try:
        raw = to_json(raw)
        return None if canonical(raw) == canonical(value) else ("sent", raw)
    except CAUGHT as exc:
        return type(exc)


def new_sent(raw: Any, value: Any) -> Any:
    bound = Bound(values={"p": value}, claim_bound=frozenset(), ignored={}, sent={"p": (raw, True)})
    entry: dict[str, Any] = {"from": "caller", "value": value}
    try:
        event_module._sent(entry, "p", bound, Bounds())
    except CAUGHT as exc:
        return type(exc)
    if "sent" not in entry:
        return None
    assert entry["text"] is True
    return ("sent", entry["sent"])


sent_values = (
    st.text(max_size=5)
    | SURROGATES
    | st.integers()
    | st.sampled_from([2**64, 2**64 - 1, -(2**64), 0, 1, True, False, None])
    | st.integers(4301, 4400).map(lambda n: -(10**n))
    | st.floats()
    | st.lists(st.integers(0, 3) | st.text(max_size=2), max_size=3)
    | st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2)
)


@given(sent_values, sent_values)
def test_sent_is_recorded_where_the_canonical_texts_differ(raw: Any, value: Any) -> None:
    assert repr(new_sent(raw, value)) == repr(old_sent(raw, value))


@pytest.mark.parametrize(
    ("raw", "value"),
    [("5", 5), ("5", "5"), (5, 5), (5, "5"), (True, 1), (1, True), (1, 1.0), ("1.0", 1.0),
     (2**64, 2**64), (10**4400, 10**4400), ("x", 10**4400), ("\ud800", "\ud800"),
     (float("nan"), float("nan")), (0.0, -0.0), (1.0, 1.0), (None, None), ([1], [1])],
    ids=lambda v: type(v).__name__,
)  # fmt: skip
def test_sent_agrees_on_the_edges(raw: Any, value: Any) -> None:
    assert repr(new_sent(raw, value)) == repr(old_sent(raw, value))


# -- whole events: built (shared blocks or not), bounded, encoded, sealed -----------------------
def compiled(audience: str = "api://shop", redact: tuple[str, ...] = ()) -> CompiledPolicy:
    env = {"OKTA_ISSUER": "https://dev-000000.okta.com/oauth2/default"}
    loaded = load_policy(REPO / "policy.example.yaml", env=env)
    if redact:
        model = loaded.policy
        audit = model.audit.model_copy(update={"redact": [*model.audit.redact, *redact]})
        loaded = dataclasses.replace(loaded, policy=model.model_copy(update={"audit": audit}))
    if audience != "api://shop":
        model = loaded.policy
        okta = model.issuers["okta"].model_copy(update={"audience": audience})
        model = model.model_copy(update={"issuers": {**model.issuers, "okta": okta}})
        loaded = dataclasses.replace(loaded, policy=model)
    return compile_policy(loaded)


POLICY = compiled()
ISS = "https://dev-000000.okta.com/oauth2/default"


def principal(**fields: Any) -> Principal:
    claims = {"tenant": "t1", "aud": "api://shop", "sub": fields.get("subject", "s1")}
    claims.update(fields.pop("claims", {}))
    base: dict[str, Any] = {
        "issuer": "okta",
        "iss": ISS,
        "subject": "s1",
        "client_id": "c1",
        "groups": frozenset({"support"}),
        "token_id": "jti-1",
    }
    return Principal(**{**base, **fields, "claims": claims})


def call_of(
    who: Principal, method: str, path: str, *, query: Any = (), body: Any = None, **extra: Any
) -> CallRecord:
    facts = RequestFacts(method=method, path=path, query=list(query), body=body)
    decision = decide(POLICY, facts, who)
    return CallRecord(
        request_id="r1",
        method=method,
        path=path,
        started=time.perf_counter(),
        client="203.0.113.7",
        user_agent=extra.pop("user_agent", "ua/1"),
        principal=who,
        decision=decision,
        status=200 if decision.allow else 403,
        request_tag="tag",
        received="2026-12-01T00:00:00.000000Z",
        insert_id="i1",
        **extra,
    )


def stable(event: dict[str, Any]) -> dict[str, Any]:
    """The event without what changes between two builds of one call (its time, its latency)."""
    http = {k: v for k, v in event["httpRequest"].items() if k != "latency"}
    return {**{k: v for k, v in event.items() if k != "timestamp"}, "httpRequest": http}


def check_encoded(event: dict[str, Any], members: Any, key: bytes | None) -> None:
    """``members`` are ``json.dumps`` of each member; sealing them writes the canonical line of
    the sealed event with its hash, as ``json.dumps`` makes them."""
    if members is None:  # to be scrubbed when sealed: json.dumps refuses it too
        with pytest.raises(CAUGHT):
            dumps(event).encode()
        return
    assert members == {k: dumps(v).encode() for k, v in event.items()}
    assert members_size(members) == len(line_text(dumps(event)).encode())
    sealed, line = Chain(key, chain_id="c1").seal(event, members)
    assert line == (line_text(dumps(sealed)) + "\n").encode()
    body = dumps({k: v for k, v in sealed.items() if k != "hash"}).encode()
    digest = hmac.new(key, body, hashlib.sha256) if key else hashlib.sha256(body)
    assert sealed["hash"] == digest.hexdigest()


def build(call: CallRecord, policy: CompiledPolicy, key: bytes | None, **kw: Any) -> Any:
    return build_event_encoded(call, policy, key=key, **kw)


CALLS = {
    "point read": lambda: call_of(principal(), "GET", "/v1/orders/O-1"),
    "list with coerced values": lambda: call_of(
        principal(), "GET", "/v1/orders", query=[("status", "PAID"), ("min_total_cents", "5")]
    ),
    "refused": lambda: call_of(principal(groups=frozenset()), "GET", "/v1/orders/O-1"),
    "agent": lambda: call_of(
        principal(groups=frozenset(), scopes=frozenset({"orders.read"}), client_id=None),
        "GET",
        "/v1/orders/O-2",
    ),
    "delegated": lambda: call_of(
        principal(
            scopes=frozenset({"orders.read"}),
            claims={"act": {"sub": "order-agent", "note": "n" * 600, "act": {"sub": "x"}}},
        ),
        "GET",
        "/v1/orders/O-3",
    ),
    "audiences": lambda: call_of(
        principal(claims={"aud": ["api://shop", "other", 5]}), "GET", "/v1/orders/O-1"
    ),
    "foreign audience": lambda: call_of(
        principal(claims={"aud": "other"}), "GET", "/v1/orders/O-1"
    ),
    "audience list": lambda: call_of(
        principal(claims={"aud": ["other", "api://shop"]}), "GET", "/v1/orders/O-1"
    ),
    "introspected": lambda: call_of(principal(introspected=True), "GET", "/v1/orders/O-1"),
    "no aud, introspected": lambda: call_of(
        principal(introspected=True, claims={"aud": None}), "GET", "/v1/orders/O-1"
    ),
    "long and odd strings": lambda: call_of(
        principal(subject="s\u2028" * 400, token_id="\ud800j", client_id="c" * 700),  # noqa: S106
        "GET",
        "/v1/orders/O-\u2029",
        user_agent="\x85" * 300,
    ),
    "hostile claims": lambda: call_of(
        principal(claims={"tenant": ["t\ud800", float("nan"), {"k": 10**30}]}),
        "GET",
        "/v1/orders/O-1",
    ),
    "write": lambda: call_of(
        principal(groups=frozenset(), scopes=frozenset({"orders.write"})),
        "POST",
        "/v1/orders",
        body={"order_id": "O-9", "customer_id": "C-1", "total_cents": 500, "tenant": "t9"},
        result=Result(row_count=1, commit_timestamp="2026-12-01T00:00:00.000001Z", is_dml=True),
    ),
    "too large": lambda: call_of(
        principal(claims={"tenant": "t" * 400}),
        "GET",
        "/v1/orders",
        query=[("status", "PAID"), ("tenant", "x" * 3000), ("min_total_cents", "7" * 30)],
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("key", [None, b"k" * 32])
@pytest.mark.parametrize("max_bytes", [16384, 4096])
def test_events_encode_and_seal_as_json_dumps_does(
    name: str, key: bytes | None, max_bytes: int
) -> None:
    """Each call built three times: on a fresh policy (blocks built), again (blocks shared), and
    on an equal policy of its own (built again): the same event, the same bytes."""
    make = CALLS[name]
    policy = compiled()
    built = [build(make(), policy, key, max_bytes=max_bytes) for _ in range(2)]
    built.append(build(make(), compiled(), key, max_bytes=max_bytes))
    for event, members in built:
        check_encoded(event, members, key)
        assert repr(stable(event)) == repr(stable(built[0][0]))  # 1 and True apart


def test_a_shared_block_is_the_same_object_and_is_never_changed() -> None:
    policy = compiled()
    first, _ = build(CALLS["point read"](), policy, None)
    # a larger event of the same token: its caller values are dropped, never the shared block
    query = [("status", "PAID"), *[("tenant", "t")] * 1500]
    again, members = build(
        call_of(principal(), "GET", "/v1/orders", query=query), policy, None, max_bytes=4096
    )
    auth = first["protoPayload"]["authenticationInfo"]
    assert again["protoPayload"]["authenticationInfo"] is auth
    assert again["protoPayload"]["request"]["ignoredCallerValues"] == {"tenant": None}
    check_encoded(again, members, None)
    assert auth == build(CALLS["point read"](), compiled(), None)[0]["protoPayload"][
        "authenticationInfo"
    ]


def test_blocks_are_not_shared_across_policies() -> None:
    """A reload that changes what a token's block holds (the issuer's audiences) is seen at once."""
    before = compiled()
    after = compiled(audience="other")
    call = CALLS["audiences"]
    audience = [
        build(call(), policy, None)[0]["protoPayload"]["authenticationInfo"][
            "thirdPartyPrincipal"
        ]["audience"]
        for policy in (before, after, before)
    ]
    assert audience == [["api://shop"], ["other"], ["api://shop"]]


def test_blocks_that_were_cut_or_name_an_actor_are_not_shared() -> None:
    policy = compiled()
    for name in ("long and odd strings", "delegated"):
        one = build(CALLS[name](), policy, None)[0]["protoPayload"]["authenticationInfo"]
        two = build(CALLS[name](), policy, None)[0]["protoPayload"]["authenticationInfo"]
        assert one == two and one is not two


def test_values_of_other_types_are_not_shared() -> None:
    """A subject of ``1`` and of ``True`` are equal keys but encode apart: never shared."""
    policy = compiled()
    blocks = []
    for odd in (("a", 1), ("a", True)):
        call = CALLS["point read"]()
        call.principal = principal(subject=odd)  # type: ignore[arg-type]
        event, members = build(call, policy, None)
        check_encoded(event, members, None)
        blocks.append(event["protoPayload"]["authenticationInfo"])
    assert [dumps(b["principalSubject"]) for b in blocks] == ['["a",1]', '["a",true]']


def test_the_shared_blocks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "MAX_BLOCKS", 3)
    policy = compiled()
    for n in range(10):
        call = CALLS["point read"]()
        call.principal = principal(token_id=f"jti-{n}")
        event, members = build(call, policy, None)
        check_encoded(event, members, None)
        assert event["protoPayload"]["authenticationInfo"]["thirdPartyPrincipal"]["tokenId"] == (
            f"jti-{n}"
        )
    assert len(shared.SharedBlocks.of(policy)._blocks) <= 3


def test_calls_share_only_blocks_they_would_build_alike() -> None:
    """Every call above, in turn and again, on one policy: each event as on a policy of its own
    (the tokens differ in one value each: audiences, client, introspection, groups...)."""
    alone = {name: build(CALLS[name](), compiled(), b"k" * 32)[0] for name in CALLS}
    policy = compiled()  # after the others: one policy's blocks are kept at a time
    for name in [*sorted(CALLS), *sorted(CALLS, reverse=True)]:
        event, members = build(CALLS[name](), policy, b"k" * 32)
        check_encoded(event, members, b"k" * 32)
        assert repr(stable(event)) == repr(stable(alone[name])), name
    assert len(shared.SharedBlocks.of(policy)._blocks) > 3  # they were shared


@pytest.mark.parametrize("key", [None, b"k" * 32])
def test_group_names_hashed_or_not_are_shared_apart(key: bytes | None) -> None:
    """Whether the token holds each group a role names: the names as they are, or each its
    keyed hash when ``audit.redact`` names ``claim.groups`` (unkeyed: its SHA-256)."""
    plain, hashed = compiled(), compiled(redact=("claim.groups",))
    for policy in (plain, hashed, plain, hashed):
        event, members = build(CALLS["point read"](), policy, key)
        check_encoded(event, members, key)
        read = event["protoPayload"]["metadata"]["claimsRead"]
        names = ["support", "support-leads", "suspended"]
        if policy is hashed:
            assert read["groups"] == {
                event_module.redacted(n, key): n == "support" for n in names
            }
        else:
            assert read["groups"] == {n: n == "support" for n in names}
        assert read["scopes"] == {"orders.read": False, "orders.write": False}
