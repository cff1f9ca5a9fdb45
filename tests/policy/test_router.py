from __future__ import annotations

import itertools
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.policy.overlap import overlaps, refines, route_overlaps, segments_of
from gateway.policy.router import Match, MethodMismatch, PathInvalid, Router, decode_path

ROUTES = [
    ("GET", "/v1/orders/{order_id}"),
    ("GET", "/v1/orders"),
    ("POST", "/v1/orders"),
    ("GET", "/v1/orders/{order_id}/items"),
    ("GET", "/v1/orders/latest"),
    ("GET", "/a/b/c"),
    ("GET", "/a/{x}/d"),
    ("DELETE", "/v1/orders/{order_id}"),
    ("GET", "/v1/dir/"),
]
ROUTER = Router(ROUTES)


def test_a_literal_beats_a_parameter() -> None:
    assert ROUTER.match("GET", "/v1/orders/latest") == Match(4, {})
    assert ROUTER.match("GET", "/v1/orders/O-1") == Match(0, {"order_id": "O-1"})


def test_backtracking_keeps_both_templates_reachable() -> None:
    assert ROUTER.match("GET", "/a/b/c") == Match(5, {})
    assert ROUTER.match("GET", "/a/b/d") == Match(6, {"x": "b"})


def test_percent_decoding_happens_exactly_once() -> None:
    assert ROUTER.match("GET", "/v1/orders/O%2D1") == Match(0, {"order_id": "O-1"})
    # %25 decodes to a literal %: "%2541" is the text "%41", never "A".
    assert ROUTER.match("GET", "/v1/orders/%2541") == Match(0, {"order_id": "%41"})
    assert ROUTER.match("GET", "/v1/orders/caf%C3%A9") == Match(0, {"order_id": "café"})


@pytest.mark.parametrize(
    "path",
    [
        "/v1/orders/..",
        "/v1/orders/.",
        "/v1/orders/%2e%2e",
        "/v1/orders/%2E",
        "/v1/orders/a%2Fb",
        "/v1/orders/a%5Cb",
        "/v1/orders/a%00b",
        "/v1/orders/a%0Ab",
        "/v1/orders/%FF",
        "/v1/orders/../orders",
        "v1/orders",
    ],
)
def test_ambiguous_paths_are_refused_not_normalised(path: str) -> None:
    with pytest.raises(PathInvalid):
        ROUTER.match("GET", path)


def test_a_trailing_slash_is_another_path() -> None:
    assert ROUTER.match("GET", "/v1/orders/") is None
    assert ROUTER.match("GET", "/v1/dir/") == Match(8, {})
    assert ROUTER.match("GET", "/v1/dir") is None


def test_an_empty_segment_never_fills_a_parameter() -> None:
    assert ROUTER.match("GET", "/v1/orders//items") is None


def test_head_follows_get_and_other_methods_get_405_with_allow() -> None:
    assert ROUTER.match("HEAD", "/v1/orders/O-1") == Match(0, {"order_id": "O-1"})
    assert ROUTER.match("PUT", "/v1/orders/O-1") == MethodMismatch(("DELETE", "GET", "HEAD"))
    assert ROUTER.match("DELETE", "/v1/orders") == MethodMismatch(("GET", "HEAD", "POST"))
    assert ROUTER.match("GET", "/nowhere") is None


def test_the_method_decides_between_overlapping_templates_of_other_methods() -> None:
    router = Router([("GET", "/a/{x}"), ("POST", "/{y}/b")])
    assert router.match("POST", "/a/b") == Match(1, {"y": "a"})
    assert router.match("GET", "/a/b") == Match(0, {"x": "b"})
    assert router.match("PUT", "/a/b") == MethodMismatch(("GET", "HEAD", "POST"))


def test_overlap_and_refinement() -> None:
    a, b, c = segments_of("/a/{x}"), segments_of("/{y}/b"), segments_of("/a/b")
    assert overlaps(a, b) and not refines(a, b) and not refines(b, a)
    assert refines(c, a) and refines(c, b) and not refines(a, c)
    assert not overlaps(segments_of("/a/"), segments_of("/a/{x}"))  # {x} never matches ""
    assert not overlaps(segments_of("/a"), segments_of("/a/{x}"))
    routes = [("GET", "/a/{x}"), ("GET", "/{y}/b"), ("POST", "/{z}/b"), ("GET", "/a/b")]
    assert [(o.later, o.earlier, o.example, o.meet) for o in route_overlaps(routes[:3])] == [
        (1, 0, "/a/b", "/a/b")
    ]
    assert route_overlaps(routes) == []  # /a/b is the intersection: it wins on /a/b


# --- properties ----------------------------------------------------------------------------------
# Templates over a tiny alphabet so that they collide often; paths over the same alphabet plus a
# literal no template has ("z"), which stands for every other text: enumerating them is exact.

LITERALS = ("a", "b")
PATH_SEGMENTS = ("a", "b", "z")


@st.composite
def templates(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 3))
    parts = [draw(st.sampled_from([*LITERALS, None])) for _ in range(n)]
    text = "/" + "/".join(f"{{p{i}}}" if p is None else p for i, p in enumerate(parts))
    return text + ("/" if draw(st.booleans()) and n < 3 else "")


ROUTE_SETS = st.lists(st.tuples(st.sampled_from(["GET", "POST"]), templates()), max_size=7)


def all_paths() -> list[str]:
    out = []
    for n in (1, 2, 3):
        for parts in itertools.product(PATH_SEGMENTS, repeat=n):
            out.append("/" + "/".join(parts))
            out.append("/" + "/".join(parts) + "/")
    return out


PATHS = all_paths()


def matches(template: str, path: str) -> bool:
    """An oracle independent of the router: segment by segment."""
    t, p = template.split("/")[1:], path.split("/")[1:]
    return len(t) == len(p) and all(
        (x.startswith("{") and y != "") or x == y for x, y in zip(t, p, strict=True)
    )


def most_specific(routes: list[tuple[str, str]], method: str, path: str) -> list[int]:
    """The matching routes of ``method`` that match no path the others do not (by enumeration):
    those that refine every other match."""
    candidates = [i for i, (m, t) in enumerate(routes) if m == method and matches(t, path)]
    sets = {i: {p for p in PATHS if matches(routes[i][1], p)} for i in candidates}
    return [i for i in candidates if all(sets[i] <= sets[j] for j in candidates)]


def ambiguous(routes: list[tuple[str, str]]) -> bool:
    """Whether some request matches routes of which none is more specific than all others."""
    return any(
        not most_specific(routes, method, path)
        for method in ("GET", "POST")
        for path in PATHS
        if any(m == method and matches(t, path) for m, t in routes)
    )


def valid(routes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The routes without exact duplicates of shape (those the validator reports separately)."""
    seen, kept = set(), []
    for method, template in routes:
        key = (method, segments_of(template))
        if key not in seen:
            seen.add(key)
            kept.append((method, template))
    return kept


@settings(max_examples=300, deadline=None)
@given(ROUTE_SETS)
@example([("GET", "/a/{p1}"), ("GET", "/{p0}/b")])
@example([("GET", "/a/"), ("GET", "/a/{p1}"), ("GET", "/{p0}/")])
@example([("GET", "/a/{p1}"), ("GET", "/{p0}/b"), ("GET", "/a/b")])
@example([("GET", "/a/{p1}/{p2}"), ("GET", "/{p0}/b/{p2}"), ("GET", "/a/b/a")])
def test_the_overlap_check_finds_exactly_the_ambiguous_route_sets(
    routes: list[tuple[str, str]],
) -> None:
    routes = valid(routes)
    assert bool(route_overlaps(routes)) == ambiguous(routes)


@settings(max_examples=300, deadline=None)
@given(ROUTE_SETS)
def test_no_request_matches_two_routes(routes: list[tuple[str, str]]) -> None:
    routes = valid(routes)
    if route_overlaps(routes):
        return  # the loader refuses these policies
    router = Router(routes)
    for method in ("GET", "POST"):
        for path in PATHS:
            candidates = [i for i, (m, t) in enumerate(routes) if m == method and matches(t, path)]
            hit = router.match(method, path)
            if not candidates:
                assert not isinstance(hit, Match)
                continue
            # Exactly one candidate is more specific than all the others, and the router takes it.
            best = most_specific(routes, method, path)
            assert len(best) == 1
            assert isinstance(hit, Match) and hit.route == best[0]


SEGMENT_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=8
)


@settings(max_examples=300, deadline=None)
@given(templates(), st.lists(SEGMENT_TEXT, min_size=3, max_size=3))
@example("/{p0}/b", ["..", "", ""])
@example("/{p0}", ["a/b", "", ""])
@example("/{p0}", ["%41", "", ""])
def test_a_matched_paths_parameters_rebuild_the_path(template: str, values: list[str]) -> None:
    names = [s[1:-1] for s in template.split("/")[1:] if s.startswith("{")]
    given_values = dict(zip(names, values, strict=False))
    raw = "/".join(
        quote(given_values[s[1:-1]], safe="") if s.startswith("{") else s
        for s in template.split("/")
    )
    router = Router([("GET", template)])
    try:
        hit = router.match("GET", raw)
    except PathInvalid:
        # Only values the router must refuse: dot segments, slashes, control characters.
        assert any(
            v in (".", "..")
            or "/" in v
            or "\\" in v
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in v)
            for v in given_values.values()
        )
        return
    if any(v == "" for v in given_values.values()):
        assert hit is None  # an empty segment never fills a parameter
        return
    assert isinstance(hit, Match)
    assert hit.params == given_values
    rebuilt = "/".join(
        quote(hit.params[s[1:-1]], safe="") if s.startswith("{") else s for s in template.split("/")
    )
    assert rebuilt == raw
    assert decode_path(rebuilt) == decode_path(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "b", "%61", "%2F", "..", "%2e", "x%20y", "%E2%82%AC", ""]),
        min_size=1,
        max_size=3,
    )
)
def test_any_matched_raw_path_is_rebuilt_from_its_parameters(parts: list[str]) -> None:
    raw = "/" + "/".join(parts)
    templates = ["/{p0}", "/{p0}/{p1}", "/{p0}/{p1}/{p2}", "/a/{p1}/{p2}"]
    router = Router([("GET", t) for t in templates])
    try:
        hit = router.match("GET", raw)
    except PathInvalid:
        return
    if hit is None:
        assert "" in parts
        return
    assert isinstance(hit, Match)
    template = templates[hit.route]
    rebuilt = "/".join(
        quote(hit.params[s[1:-1]], safe="") if s.startswith("{") else s for s in template.split("/")
    )
    assert decode_path(rebuilt) == decode_path(raw)
    assert router.match("GET", rebuilt) == hit
