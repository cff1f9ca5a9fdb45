"""The chain's sealing: the written line is exactly the canonical JSON that verification hashes,
with the line breaks JSON leaves raw (U+0085, U+2028, U+2029) escaped."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.chain import (
    GENESIS,
    AuditKeys,
    Chain,
    canonical,
    encode_members,
    encoded_size,
    event_hash,
    line_text,
    members_size,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text() | st.text("a\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8), st.booleans())
def test_the_line_is_the_canonical_json_of_the_sealed_event(
    event: dict[str, Any], keyed: bool
) -> None:
    key = b"k" * 32 if keyed else None
    chain = Chain(key)
    sealed, line = chain.seal(event)
    assert line == line_text(canonical(sealed).decode()).encode() + b"\n"
    assert json.loads(line) == sealed  # the same content as the hashed form
    assert len(line.decode().splitlines()) == 1  # one line for every line splitter
    assert sealed["hash"] == event_hash(sealed, key) == chain.last_hash
    assert (sealed["seq"], sealed["prev"], sealed["chain"]) == (1, GENESIS, chain.chain_id)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8), st.integers(1, 9))
def test_members_encoded_beforehand_seal_to_the_same_line(
    event: dict[str, Any], worker: int
) -> None:
    """What ``bounds.fit`` encodes while it bounds an event is what sealing joins: the same bytes
    as sealing the event alone, and ``members_size`` is the size of its line without the chain's
    own members (``"chain"``, ``"seq"``, ``"prev"``, ``"worker"``, ``"hash"``): ``encoded_size``."""
    members = encode_members(event)
    assert members is not None
    alone, given = Chain(b"k" * 32, chain_id="c1", worker=worker), Chain(b"k" * 32, chain_id="c1")
    given.worker = worker
    sealed, line = alone.seal(event)
    assert given.seal(event, members) == (sealed, line)
    own = {"chain", "seq", "prev", "worker", "hash"}
    plain = {k: v for k, v in event.items() if k not in own}
    assert members_size({k: v for k, v in members.items() if k not in own}) == encoded_size(plain)


def test_odd_keys_are_sealed_as_strings() -> None:
    sealed, line = Chain(None).seal({1: "one", "two": 2})  # type: ignore[dict-item]
    assert json.loads(line) == sealed and sealed["1"] == "one"


def test_a_chain_links_and_rolls_back() -> None:
    chain = Chain(None)
    chain.start("a" * 64)  # the predecessor's last hash
    first, _ = chain.seal({"n": 1})
    assert first["prev"] == "a" * 64
    mark = chain.mark()
    chain.seal({"n": 2})
    chain.seal({"n": 3})
    chain.rollback(mark)  # that batch was not written
    again, _ = chain.seal({"n": 2})
    assert again["seq"] == 2 and again["prev"] == first["hash"]


def test_keys_are_derived_and_separate() -> None:
    keys = AuditKeys.from_secret(b"secret")
    assert keys.chain and keys.redact and keys.chain != keys.redact != b"secret"
    assert AuditKeys.from_secret(None) == AuditKeys(None, None) == AuditKeys.from_secret(b"")
