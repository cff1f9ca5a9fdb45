"""The pure pieces of the Spanner layer: limits, Idempotency-Key hashing, tags, value rendering,
and the OpenAPI patterns (each must accept exactly what the parameter parser accepts)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.intrange import int_range_pattern
from gateway.openapi import _BODY, _SEGMENT, _TEXT
from gateway.policy.types import INT64_MAX, INT64_MIN, ParamType, TypeProblem, coerce
from gateway.spanner.execute import tags_for
from gateway.spanner.idempotency import canonical, key_for, parse_key
from gateway.spanner.limits import (
    MAX_REQUEST_BYTES,
    TooManyMutations,
    check_limits,
    insert_cells_per_row,
)
from gateway.spanner.results import rfc3339, to_json

INT64 = st.integers(INT64_MIN, INT64_MAX)


@given(st.tuples(INT64, INT64), st.integers(INT64_MIN - 10, INT64_MAX + 10))
def test_int_range_pattern_matches_exactly_the_range(bounds: tuple[int, int], n: int) -> None:
    lo, hi = sorted(bounds)
    pattern = re.compile(int_range_pattern(lo, hi))
    assert bool(pattern.match(str(n))) == (lo <= n <= hi)
    assert pattern.match(str(lo)) and pattern.match(str(hi))
    assert pattern.match(str(lo + (hi - lo) // 2))


def test_int_range_pattern_refuses_empty_ranges() -> None:
    with pytest.raises(ValueError, match="empty range"):
        int_range_pattern(2, 1)


@given(st.from_regex(int_range_pattern(-17, 1234), fullmatch=True))
def test_what_the_int64_text_pattern_allows_the_parser_takes(text: str) -> None:
    assert -17 <= coerce(ParamType("INT64"), text, from_text=False) <= 1234


@pytest.mark.parametrize(
    ("kind", "table"),
    [("NUMERIC", _BODY), ("BYTES", _BODY), ("DATE", _BODY), ("TIMESTAMP", _BODY)],
)
def test_documented_patterns_only_allow_what_the_parser_takes(
    kind: str, table: dict[str, dict[str, str]]
) -> None:
    @given(st.from_regex(table[kind]["pattern"], fullmatch=True))
    def check(text: str) -> None:
        try:
            coerce(ParamType(kind), text, from_text=False)
        except TypeProblem as exc:
            if kind in ("DATE", "TIMESTAMP") and "invalid" in str(exc):
                return  # 2026-02-31: a calendar check no pattern makes (the format does)
            raise

    check()


@given(st.from_regex(_TEXT["JSON"]["pattern"], fullmatch=True))
def test_json_query_elements_the_pattern_allows_parse(text: str) -> None:
    coerce(ParamType("JSON"), text, from_text=True)


@given(st.text(min_size=1, max_size=20))
def test_path_segments_the_pattern_allows_route(text: str) -> None:
    from gateway.policy.router import PathInvalid, decode_path

    # OpenAPI patterns are ECMA regexes, where $ is the end of the text; in Python it also
    # matches before a final newline, so check with \Z.
    if re.match(_SEGMENT.replace("$", r"\Z"), text):
        from urllib.parse import quote

        try:
            decode_path("/" + quote(text, safe=""))
        except PathInvalid as exc:
            raise AssertionError(f"{text!r}: {exc}") from None


def test_request_size_and_mutation_limits() -> None:
    check_limits("SELECT 1", {"big": "x" * 1000}, is_dml=False)
    with pytest.raises(PayloadTooLarge) as caught:
        check_limits("SELECT @s", {"s": "x" * (MAX_REQUEST_BYTES + 1)}, is_dml=False)
    assert caught.value.status == 413 and caught.value.code == "request-too-large"
    sql = "INSERT INTO T (A, B) SELECT a, 'x' FROM UNNEST(@ids) AS a"
    check_limits(sql, {"ids": list(range(40_000))}, is_dml=True)  # exactly 80,000
    with pytest.raises(TooManyMutations) as too_many:
        check_limits(sql, {"ids": list(range(40_001))}, is_dml=True)
    assert too_many.value.status == 422 and too_many.value.code == "too-many-mutations"
    one_row = "INSERT INTO T (A, B) VALUES (@a, @b)"
    check_limits(one_row, {"a": 1, "b": list(range(90_000))}, is_dml=True)  # one row
    assert insert_cells_per_row(
        "INSERT OR UPDATE INTO T (A, B, C) VALUES (1, 2, 3), (4, 5, 6)"
    ) == (3, 2)
    assert insert_cells_per_row("UPDATE T SET A = 1 WHERE TRUE") is None


def test_idempotency_keys() -> None:
    assert parse_key([]) is None
    assert parse_key([b"abc-123 x"]) == "abc-123 x"
    for bad in ([b""], [b"x" * 256], [b"a\tb"], [b"\xc3\xa9"], [b"a", b"b"]):
        with pytest.raises(BadRequest) as caught:
            parse_key(bad)
        assert caught.value.code == "idempotency-key-invalid"

    def key(**change: object) -> tuple[str, str]:
        args: dict[str, object] = {
            "issuer": "https://idp", "subject": "s", "method": "POST", "route": "/orders",
            "query": "create", "values": {"n": decimal.Decimal("1.50"), "b": b"\x00"},
            "ttl_seconds": 60.0, **change,
        }  # fmt: skip
        k = key_for("K", **args)  # type: ignore[arg-type]
        return k.key_hash, k.request_hash

    base = key()
    assert key() == base and len(base[0]) == len(base[1]) == 64
    assert key(subject="t")[0] != base[0]  # another caller: another record
    assert key(issuer="https://other")[0] != base[0]
    assert key(values={"n": decimal.Decimal("1.5"), "b": b"\x00"})[1] == base[1]  # same number
    assert key(values={"n": decimal.Decimal("1.51"), "b": b"\x00"})[1] != base[1]
    assert key(route="/other")[1] != base[1] and key(query="other")[1] != base[1]
    assert canonical(math.nan) != canonical(math.inf) and canonical("1") != canonical(1)
    assert canonical(b"ab") != canonical("ab")


def test_tags_keep_the_request_id_and_fit_spanner() -> None:
    tags = tags_for("get_order", "GET", "/v1/orders/{order_id}", "4f1c" * 8)
    assert tags.request == "4f1c" * 8 + " get_order GET /v1"  # cut at 50: the id stays whole
    assert len(tags.request) == 50
    assert tags.transaction == "get_order GET /v1/orders/{order_id}"


def test_rendering_of_timestamps_and_values() -> None:
    nanos = DatetimeWithNanoseconds(2026, 1, 31, 12, 0, 0, nanosecond=5, tzinfo=dt.UTC)
    assert rfc3339(nanos) == "2026-01-31T12:00:00.000000005Z"
    assert rfc3339(DatetimeWithNanoseconds(1, 1, 1, tzinfo=dt.UTC)) == "0001-01-01T00:00:00Z"
    offset = dt.datetime(2026, 1, 1, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(offset) == "2025-12-31T23:30:00Z"
    assert to_json(math.inf) == "Infinity" and to_json(-math.inf) == "-Infinity"
    assert to_json(math.nan) == "NaN" and to_json(2**63 - 1) == 2**63 - 1
    assert to_json(decimal.Decimal("-0.000000001")) == "-0.000000001"
    assert to_json(dt.date(1, 1, 1)) == "0001-01-01"


@pytest.mark.parametrize(
    ("sql", "table", "fixed"),
    [
        ("SELECT A FROM Orders WHERE TenantId = @t AND OrderId = @o", "Orders", {"TENANTID", "ORDERID"}),
        ("SELECT o.A FROM Orders AS o WHERE o.TenantId = 't1' AND @o = o.OrderId ORDER BY o.A LIMIT 5",
         "Orders", {"TENANTID", "ORDERID"}),
        ("SELECT A FROM Orders WHERE (TenantId = @t OR TRUE) AND OrderId = @o", "Orders", {"ORDERID"}),
        ("SELECT (SELECT 1 FROM Y WHERE b = @b) AS x FROM Orders WHERE Id = 5", "Orders", {"ID"}),
        ("SELECT A FROM Orders WHERE TenantId = @t OR OrderId = @o", None, None),
        ("SELECT A FROM Orders o JOIN X ON o.a = X.a WHERE o.a = @a", None, None),
        ("SELECT A FROM Orders, X WHERE Orders.a = @a", None, None),
        ("SELECT A FROM Orders WHERE Id = @i UNION ALL SELECT A FROM X WHERE Id = @i", None, None),
        ("SELECT A FROM Orders WHERE x BETWEEN 1 AND Id = @x", None, None),
        ("SELECT A FROM Orders WHERE Id > @x", None, None),
        ("SELECT A FROM Orders WHERE X.Id = @x", None, None),
        ("WITH t AS (SELECT 1) SELECT A FROM t WHERE Id = @x", None, None),
    ],
)  # fmt: skip
def test_point_lookup_shapes(sql: str, table: str | None, fixed: set[str] | None) -> None:
    from gateway.spanner.bounded import point_lookup

    found = point_lookup(sql)
    if table is None:
        assert found is None
    else:
        assert found is not None and found.table == table and found.fixed == fixed


@pytest.mark.parametrize(
    ("sql", "limit"),
    [
        ("SELECT 1 LIMIT 5", 5),
        ("SELECT A FROM T ORDER BY A LIMIT 5 OFFSET 10", 5),
        ("SELECT A FROM T LIMIT @n", None),
        ("SELECT (SELECT 1 LIMIT 1) AS x", None),
        ("SELECT A FROM T", None),
    ],
)
def test_literal_limits(sql: str, limit: int | None) -> None:
    from gateway.spanner.bounded import _literal_limit

    assert _literal_limit(sql) == limit
