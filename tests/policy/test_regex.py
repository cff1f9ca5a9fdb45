"""The policy's regular expressions run in linear time (RE2): no pattern can stall the gateway."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from builders import REPO, base, caller, compiled, where_in

from gateway.cli import main
from gateway.errors import PolicyError
from gateway.policy.decide import decide
from gateway.policy.load import load_policy, load_policy_data
from gateway.policy.regex import RegexProblem, compile_regex
from gateway.policy.simulate import request_facts

# Exponential for a backtracking engine: Python's re takes seconds on 27 bytes, and longer than the
# age of the universe on the 5,001 used here. RE2 answers in microseconds, so a generous timeout
# cannot flake and a backtracking matcher can never pass.
CATASTROPHIC = "^([A-Z0-9]+-?)+$"
HOSTILE = "A" * 5000 + "!"


def with_id(**param: Any) -> dict[str, Any]:
    data = base()
    data["queries"]["get_thing"]["params"]["id"] = {"type": "STRING", **param}
    return data


@pytest.mark.timeout(30)
def test_a_catastrophic_pattern_refuses_a_long_value_at_once() -> None:
    policy = compiled(with_id(pattern=CATASTROPHIC))
    who = caller(policy, groups=["staff"], tenant="t1")
    refused = decide(policy, request_facts(f"GET /things/{HOSTILE}"), who)
    assert (refused.allow, refused.reason) == (False, "param-invalid")
    assert refused.problem is not None and f"must match {CATASTROPHIC}" in str(refused.problem)
    allowed = decide(policy, request_facts("GET /things/AB-12-C"), who)
    assert allowed.allow, allowed.reason


@pytest.mark.timeout(30)
def test_a_catastrophic_claim_pattern_is_linear_too() -> None:
    data = base()
    data["roles"]["staff"] = [{"claims": {"code": {"matches": CATASTROPHIC}}}]
    policy = compiled(data)
    assert policy.roles.held(caller(policy, code=HOSTILE)) == frozenset()
    assert policy.roles.held(caller(policy, code="AB-12")) == {"staff"}
    [trace] = policy.roles.trace(caller(policy, code=HOSTILE), ["staff"])
    assert not trace.holds


def test_matching_is_a_full_match_with_re2_syntax() -> None:
    data = base()
    data["roles"]["staff"] = [{"claims": {"email": {"matches": "[^@]+@corp[.]example"}}}]
    policy = compiled(data)
    assert policy.roles.held(caller(policy, email="a@corp.example")) == {"staff"}
    assert policy.roles.held(caller(policy, email="a@corp.example.evil")) == frozenset()
    assert policy.roles.held(caller(policy, email=["x", "a@corp.example"])) == {"staff"}
    digits = compile_regex(r"\d+")
    assert digits.fullmatch("123") and not digits.fullmatch("١٢٣")  # RE2's \d is ASCII
    assert not compile_regex("a$").fullmatch("a\n")  # $ is the end of the text
    assert not compile_regex(".*").fullmatch("\ud800")  # not text: never matches, never raises


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"^(a+)\1$", r"invalid escape sequence: \1"),
        ("^(?=.*[0-9])[a-z0-9]+$", "invalid perl operator: (?="),
        ("^(?<!x)a$", "invalid perl operator: (?<"),
        (r"^a\Z", r"invalid escape sequence: \Z"),
        ("^a++$", "bad repetition operator: ++"),
    ],
)
def test_a_pattern_re2_cannot_run_is_a_load_error(pattern: str, why: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_data(with_id(pattern=pattern), base_dir=REPO)
    [problem] = caught.value.problems
    assert problem.where == "queries.get_thing.params.id.pattern"
    assert problem.message.startswith(f"must be a linear-time (RE2) regular expression: {why}")
    with pytest.raises(RegexProblem):
        compile_regex(pattern)


def test_refused_patterns_are_located_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        textwrap.dedent(
            r"""
            version: 1
            spanner: {project: p, instance: i, database: d}
            issuers:
              okta: {issuer: "https://idp.example", audience: api}
            identities:
              reader: {database_role: reader}
            roles:
              staff: [{claims: {email: {matches: '(?!admin)[a-z]+@corp'}}}]
            queries:
              get_thing:
                identity: reader
                sql: SELECT * FROM Things WHERE Id = @id
                params:
                  id: {type: STRING, max_length: 10, pattern: '^(a)\1$'}
            routes:
              - {path: "/things/{id}", method: GET, query: get_thing, allow: [staff]}
            """
        )
    )
    assert main(["policy", "check", str(path)]) == 2
    err = capsys.readouterr().err
    matches, pattern = where_in(path, "'(?!admin)"), where_in(path, "'^(a)")
    assert f"{matches}: roles.staff[0].claims.email.matches: must be a linear-time (RE2)" in err
    assert f"{pattern}: queries.get_thing.params.id.pattern: must be a linear-time (RE2)" in err


def test_a_pattern_without_max_length_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    text = (REPO / "policy.example.yaml").read_text()
    bounded = '{type: STRING, max_length: 14, pattern: "^O-[0-9]{1,12}$"}'
    assert bounded in text
    path.write_text(text.replace(bounded, '{type: STRING, pattern: "^O-[0-9]{1,12}$"}'))
    [warning] = load_policy(path, env={}).warnings
    assert warning.where == "queries.create_order.params.order_id.pattern"
    assert main(["policy", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok")
    at = where_in(path, '"^O-[0-9]')
    assert (
        f"{at}: warning: queries.create_order.params.order_id.pattern: "
        "pattern without max_length: the value is matched whatever its length (up to the request "
        "size limit); give max_length"
    ) in err.splitlines()
    # With max_length, or on a type a pattern does not apply to the length of, no warning.
    assert load_policy(REPO / "policy.example.yaml", env={}).warnings == ()
    assert load_policy_data(with_id(pattern="^a+$", max_length=5), base_dir=REPO).warnings == ()
    array = with_id(type="ARRAY<STRING>", pattern="^a+$", max_length=5)
    assert load_policy_data(array, base_dir=REPO).warnings == ()


def test_ascii_only_escapes_are_found_unless_the_backslash_is_escaped() -> None:
    from gateway.policy.regex import ascii_escapes

    assert ascii_escapes(r"\w+@bad\.example") == [r"\w"]
    assert ascii_escapes(r"^\d{3}\s\b\w\d$") == [r"\d", r"\s", r"\b", r"\w"]
    assert ascii_escapes(r"[\W\D]") == [r"\W", r"\D"]
    assert ascii_escapes(r"\\d \\w") == []  # an escaped backslash, then a letter
    assert ascii_escapes(r"\\\d") == [r"\d"]
    assert ascii_escapes(r"\pN[\pL\pN_]\.") == []


def test_re2_escapes_are_ascii_only_as_the_warning_says() -> None:
    # The facts the warning rests on (and its suggestions), checked on the RE2 the gateway runs.
    assert not compile_regex(r"\w+").fullmatch("é")
    assert not compile_regex(r"\d").fullmatch("٣")
    assert not compile_regex(r"\s").fullmatch("\u00a0")
    assert compile_regex(r"[\pL\pN_]+").fullmatch("é٣_")
    assert compile_regex(r"\pN").fullmatch("٣")
    assert compile_regex(r"[\s\pZ]").fullmatch("\u00a0")


def test_an_ascii_only_escape_is_a_warning_and_stronger_in_a_deny_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = with_id(pattern=r"^\d+$", max_length=9)
    data["roles"]["blocked"] = [{"claims": {"email": {"matches": r"\w+@bad\.example"}}}]
    data["roles"]["staff"] = [{"claims": {"name": {"matches": r"\s*\w+"}}}]
    warnings = {w.where: w.message for w in load_policy_data(data, base_dir=REPO).warnings}
    assert set(warnings) == {
        "queries.get_thing.params.id.pattern",
        "roles.blocked[0].claims.email.matches",
        "roles.staff[0].claims.name.matches",
    }
    param = warnings["queries.get_thing.params.id.pattern"]
    assert param.startswith(r"\d match ASCII only in RE2")
    assert r"\d -> \pN" in param and "deny" not in param
    deny = warnings["roles.blocked[0].claims.email.matches"]
    assert "role blocked is a deny role of routes[0]: a value it should deny escapes it" in deny
    assert r"\w -> [\pL\pN_]" in deny
    assert "deny" not in warnings["roles.staff[0].claims.name.matches"]
    # What the warning is about: the deny role misses a Unicode address Python's re would match.
    policy = compiled(data)
    assert policy.roles.held(caller(policy, email="bob@bad.example"), deny=True) == {"blocked"}
    assert policy.roles.held(caller(policy, email="josé@bad.example"), deny=True) == frozenset()
    # The tools print it located.
    path = tmp_path / "policy.yaml"
    text = (REPO / "policy.example.yaml").read_text()
    bounded = '{type: STRING, max_length: 14, pattern: "^O-[0-9]{1,12}$"}'
    path.write_text(text.replace(bounded, r"{type: STRING, max_length: 14, pattern: '^O-\d+$'}"))
    assert main(["policy", "check", str(path)]) == 0
    _, err = capsys.readouterr()
    at = where_in(path, r"'^O-\d+$'")
    assert f"{at}: warning: queries.create_order.params.order_id.pattern: " + r"\d match" in err


def test_each_pattern_compiles_once_per_load_and_never_on_the_request_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import re2

    from gateway.policy import regex

    compiles: list[str] = []
    real = re2.compile

    def counting(pattern: str, *args: Any) -> Any:
        compiles.append(pattern)
        return real(pattern, *args)

    monkeypatch.setattr(regex.re2, "compile", counting)
    regex.compile_regex.cache_clear()
    data = with_id(pattern="^[A-Z]-[0-9]+$", max_length=9)
    data["roles"]["staff"] = [{"claims": {"code": {"matches": "^S[0-9]+$"}}}]
    policy = compiled(data)
    assert sorted(compiles) == ["^S[0-9]+$", "^[A-Z]-[0-9]+$"]
    who = caller(policy, code="S1", tenant="t1")
    for _ in range(3):
        assert decide(policy, request_facts("GET /things/A-1"), who).allow
        assert policy.roles.trace(who, ["staff"])[0].holds  # explain, the policy tests
    assert sorted(compiles) == ["^S[0-9]+$", "^[A-Z]-[0-9]+$"]
