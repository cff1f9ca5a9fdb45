"""``spangate policy test``: the example policy's own cases, failures as diffs, coverage, problems."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from builders import EXAMPLE, REPO, where_in

from gateway.cli import main
from gateway.errors import PolicyError
from gateway.policy.testing import find_case_files, run_case_files

EXAMPLE_CASES = REPO / "policies" / "policy.example.test.yaml"


def test_the_example_policy_passes_its_cases_with_full_coverage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "test", "--require-coverage", str(EXAMPLE_CASES)]) == 0
    out = capsys.readouterr().out
    assert "49 cases, 49 passed, 0 failed" in out
    assert "routes 6/6, roles 6/6" in out
    assert "not exercised" not in out


def test_the_example_cases_reach_every_reason_they_claim() -> None:
    [suite] = run_case_files([EXAMPLE_CASES], env={})
    reasons = {o.decision.reason for o in suite.outcomes}
    assert reasons == {
        "allowed",
        "no-allow-role",
        "denied-by-role",
        "param-invalid",
        "param-unknown",
        "claim-missing",
        "no-route",
        "method-not-allowed",
        "path-invalid",
    }
    assert suite.coverage.complete


def cases(tmp_path: Path, body: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"policy: {EXAMPLE}\ncases:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return path


SUPPORT = "{iss: okta, groups: [support], tenant: t1}"


def test_a_failing_case_prints_a_diff_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cases(
        tmp_path,
        f"""\
        - name: passes
          claims: {SUPPORT}
          request: GET /v1/orders/O-1
          expect: {{allow: true}}
        - name: wrong
          claims: {SUPPORT}
          request: GET /v1/orders?limit=5&min_total_cents=10
          expect: {{allow: false, reason: no-allow-role, query: list_orders,
                    params: {{tenant: t2, limit: 5, min_total_cents: "10", status: null,
                              after_created: null, after_order: null}}}}
        """,
    )
    assert main(["policy", "test", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  {path}:7:5  wrong\n" in out
    assert "\n".join(line.strip() for line in out.splitlines()[1:12]) == textwrap.dedent("""\
        GET /v1/orders?limit=5&min_total_cents=10
        - allow: false
        + allow: true
        - reason: "no-allow-role"
        + reason: "allowed"
        query: "list_orders"
        params.after_created: null
        params.after_order: null
        params.limit: 5
        params.min_total_cents: "10"
        params.status: null""")
    assert '- params.tenant: "t2"\n        + params.tenant: "t1"' in out
    assert "2 cases, 1 passed, 1 failed" in out
    assert "passes" not in out  # passing cases only with -v


def test_coverage_names_what_no_case_exercised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cases(
        tmp_path,
        f"""\
        - name: one
          claims: {SUPPORT}
          request: GET /v1/orders/O-1
          expect: {{allow: true}}
        """,
    )
    assert main(["policy", "test", "-v", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"ok    {path}:3:5  one" in out
    assert "coverage: routes 1/6, roles 1/6" in out
    customers = where_in(EXAMPLE, "path: /v1/customers/{customer_id}")
    assert f"route routes[3] GET /v1/customers/{{customer_id}}  ({customers})" in out
    assert f"role  suspended  ({where_in(EXAMPLE, 'suspended:')})" in out
    assert main(["policy", "test", "--require-coverage", str(path)]) == 1


def test_entries_of_a_role_with_several_are_covered_one_by_one(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        EXAMPLE.read_text().replace(
            "      - groups: [support]\n",
            "      - groups: [support]\n      - claims: {email: {matches: '.*@support[.]example'}}\n",
        )
    )
    path = tmp_path / "cases.yaml"
    path.write_text(
        textwrap.dedent("""\
        policy: policy.yaml
        cases:
          - name: by group
            claims: {iss: okta, groups: [support], tenant: t1}
            request: GET /v1/customers/C-1
            expect: {allow: true}
        """)
    )
    [suite] = run_case_files([path], env={})
    assert [what for what, _ in suite.coverage.entries] == ["roles.support[1]"]
    assert suite.coverage.totals["entries"] == 2
    assert suite.coverage.entries[0][1] == where_in(policy, "claims: {email")


def test_problems_in_case_files_are_all_reported_with_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cases(
        tmp_path,
        """\
        - name: typo in the reason and a role
          claims: {iss: okta, groups: [support], tenant: t1}
          request: GET /v1/orders
          expect: {allow: false, reason: no-alow-role}
        - name: unknown key
          claim: {iss: okta}
          request: GET /v1/orders
          expect: {allow: false}
        - name: unknown issuer and a body on GET
          claims: {iss: okto}
          request: GET /v1/orders
          expect: {allow: false, rule: suport, query: list_order}
        - name: a body on GET
          claims: {iss: okta}
          request: GET /v1/orders
          body: {}
          expect: {allow: false}
        - name: not a request
          claims: {iss: okta}
          request: /v1/orders
          expect: {allow: false}
        """,
    )
    assert main(["policy", "test", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "spangate: 7 problem(s) in the cases or the policy:"
    for expected in [
        f"{path}:6:36: cases[0].expect.reason: unexpected value 'no-alow-role'",
        f"{path}:8:5: cases[1].claim: unknown key 'claim'; did you mean 'claims'?",
        f"{path}:14:49: cases[2].expect.query: unknown query 'list_order'; did you mean "
        "'list_orders'?",
        f"{path}:14:34: cases[2].expect.rule: unknown role 'suport'; did you mean 'support'?",
        f"{path}:12:13: cases[2].claims: iss 'okto' is no issuer of the policy",
        f"{path}:18:11: cases[3].body: GET requests take no body",
        f"{path}:22:14: cases[4].request: expected a request such as",
    ]:
        assert any(line.strip().startswith(expected) for line in err.splitlines()), err


def test_a_folder_is_searched_for_case_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    found = cases(
        tmp_path / "sub",
        f"""\
        - name: one
          claims: {SUPPORT}
          request: GET /v1/orders/O-1
          expect: {{allow: true}}
        """,
        "x.yml",
    )
    (tmp_path / "policy.yaml").write_text(EXAMPLE.read_text())  # no cases: not a case file
    # Dot-names are skipped: macOS's ._ files, and a ConfigMap mount's timestamped folder (the
    # same files again, behind the ..data symlink).
    (tmp_path / "sub" / "._x.yml").write_bytes(b"\x00\x05\x16\x07Mac OS X\xff")
    (tmp_path / "..2026_12_01_10_00_00.1").mkdir()
    (tmp_path / "..2026_12_01_10_00_00.1" / "x.yml").write_text(found.read_text())
    assert find_case_files([tmp_path]) == [found]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="no case files"):
        run_case_files([tmp_path / "empty"], env={})
    with pytest.raises(PolicyError, match="nothing: cannot read: No such file"):
        run_case_files([tmp_path / "nothing"], env={})


def test_a_broken_policy_is_reported_once_for_all_its_case_files(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("version: 2\n")
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(
            "policy: policy.yaml\ncases:\n  - {name: x, claims: {}, request: GET /, "
            "expect: {allow: false}}\n"
        )
    with pytest.raises(PolicyError) as caught:
        run_case_files([tmp_path / "a.yaml", tmp_path / "b.yaml"], env={})
    files = {p.file for p in caught.value.problems}
    assert files == {str(tmp_path / "policy.yaml")}
    assert len([p for p in caught.value.problems if p.where == "version"]) == 1


def test_a_deny_role_that_denied_a_delegated_token_is_covered(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        policy: {EXAMPLE}
        cases:
          - name: an agent acting for a suspended support person is denied
            claims:
              {{iss: okta, groups: [support, suspended], tenant: t1, scp: [orders.read],
               act: {{sub: order-agent}}}}
            request: GET /v1/orders/O-1001
            expect: {{allow: false, reason: denied-by-role, rule: suspended}}
        """)
    )
    [suite] = run_case_files([path], env={})
    assert [tuple(o.lines) for o in suite.outcomes] == [()]
    uncovered = [name for name, _ in suite.coverage.roles]
    assert "suspended" not in uncovered  # it denied, as a deny role, without holding
    assert "agent-for-support" not in uncovered


def test_a_claim_no_case_carries_is_named_a_misspelt_one_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parameter bound from claim.tenat (misspelt) binds nothing in any case: coverage says
    so, with the place of its `from:`, and --require-coverage fails on it."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE.read_text().replace("from: claim.tenant", "from: claim.tenat", 1))
    path = tmp_path / "cases.yaml"
    path.write_text(
        f"policy: {policy}\n"
        "cases:\n"
        "  - name: one\n"
        f"    claims: {SUPPORT}\n"
        "    request: GET /v1/customers/C-1\n"
        "    expect: {allow: true}\n"
    )
    main(["policy", "test", str(path)])
    out = capsys.readouterr().out
    assert "claims parameters are bound from 1/2" in out, out
    tenat = where_in(policy, "from: claim.tenat")
    line = tenat.rsplit(":", 2)[-2]
    assert f"claim claim.tenat  ({policy}:{line}:" in out, out
    assert main(["policy", "test", "--require-coverage", str(path)]) == 1
