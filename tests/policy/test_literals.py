"""What a pattern spells out literally (``literals.py``), read conservatively: a pattern it reads
as open may be closed, never the reverse."""

from __future__ import annotations

import pytest

from gateway.policy.literals import branches, literal_prefix, literal_suffix


def read(pattern: str) -> list[tuple[str, str, bool]] | None:
    found = branches(pattern)
    if found is None:
        return None
    return [(literal_prefix(a), literal_suffix(a), None not in a) for a in found]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("octo-org", [("octo-org", "octo-org", True)]),
        ("repo:octo-org/.*", [("repo:octo-org/", "", False)]),
        ("repo:octo-org/.*|.*", [("repo:octo-org/", "", False), ("", "", False)]),
        ("^(?:a|b)$", [("a", "a", True), ("b", "b", True)]),
        ("((a|b))", [("a", "a", True), ("b", "b", True)]),
        ("a|(b|c)d", [("a", "a", True), ("", "d", False)]),
        (r".*@shop\.iam\.gserviceaccount\.com", [("", "@shop.iam.gserviceaccount.com", False)]),
        (".*@shop.iam.gserviceaccount.com", [("", "com", False)]),  # an unescaped . is any char
        ("octo-orgs?/x", [("octo-org", "/x", False)]),  # s? is optional: not in the prefix
        ("ab+c", [("ab", "c", False)]),
        ("a{2}b", [("", "b", False)]),
        ("a{,2}b", [("a{,2}b", "a{,2}b", True)]),  # not a repetition: RE2 reads it literally
        ("(?i)octo", [("", "octo", False)]),
        (r"x\d\pNy\p{Greek}z\x41\x{42}w\123v", [("x", "v", False)]),
        (r"a\$", [("a$", "a$", True)]),
        (r"a\\$", [("a\\", "a\\", True)]),  # an escaped backslash, then the end anchor
        ("[[:alpha:]]+@x", [("", "@x", False)]),
        ("[]a|]b", [("", "b", False)]),  # a class holding ] and |, no alternation
        (r"[^@]+@shop[.]iam[\.]x", [("", "@shop.iam.x", False)]),  # one-member classes
        ("[^]]x", [("", "x", False)]),  # a negated class holding ]
        ("[]]x", [("]x", "]x", True)]),
        ("[ab]x", [("", "x", False)]),
        ("a^b", [("a", "b", False)]),
        (r"a\Qb\E", None),
    ],
)
def test_literal_parts(pattern: str, expected: list[tuple[str, str, bool]] | None) -> None:
    assert read(pattern) == expected
