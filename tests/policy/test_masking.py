"""Column masks, the policy's side: the select list read from SQL, the loader's refusals (located),
who sees which column clear (delegated tokens included), explain, and ``policy test``'s
``expect: {masked: ...}``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from builders import EXAMPLE, base, caller, compiled, where_in

from gateway.cli import main
from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import decide
from gateway.policy.explain import explain, explanation_record, render_explanation
from gateway.policy.load import load_policy
from gateway.policy.masking import column_findings, hash_masks, masked_columns
from gateway.policy.model import Mask
from gateway.policy.selectlist import result_columns
from gateway.policy.simulate import request_facts

# --- the select list, read from the text -----------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "columns"),
    [
        ("SELECT CustomerId, Name, Email FROM Customers WHERE TenantId = @t",
         ("CustomerId", "Name", "Email")),
        ("SELECT c.Email AS contact, `Name`, c.CustomerId FROM Customers c",
         ("contact", "Name", "CustomerId")),
        ("SELECT email FROM Customers", ("email",)),  # as written: Spanner answers `email`
        ("SELECT DISTINCT Email, FROM Customers", ("Email",)),  # a trailing comma is allowed
        ("SELECT COUNT(*) AS n, CAST(x AS STRING) AS s, EXTRACT(YEAR FROM d) AS y FROM t",
         ("n", "s", "y")),
        ("SELECT COUNT(*) FROM t", ("",)),  # an unnamed column (refused when analysed)
        ("WITH x AS (SELECT a, b FROM t) SELECT a AS z FROM x", ("z",)),
        ("SELECT a AS e FROM t UNION ALL SELECT b AS f FROM u", ("e",)),  # the first names it
        ("@{USE_ADDITIONAL_PARALLELISM=TRUE} SELECT a FROM t", ("a",)),
        ("SELECT a -- x, y\nFROM t", ("a",)),
        ("SELECT c.Limit, c.`From` FROM t c", ("Limit", "From")),
        ("INSERT INTO t (a) VALUES (@a)", ()),
        ("INSERT INTO t (a, b) VALUES (@a, @b) THEN RETURN a, b AS bee", ("a", "bee")),
        ("UPDATE t SET a = 1 WHERE b = @b THEN RETURN a", ("a",)),
        # not decidable from the text: Spanner's PLAN decides, at start-up
        ("SELECT * FROM Customers", None),
        ("SELECT c.* FROM Customers c", None),
        ("SELECT * EXCEPT (Email) FROM Customers", None),
        ("SELECT a b FROM t", None),  # an implicit alias, or...
        ("SELECT INTERVAL 1 DAY FROM t", None),  # ...an expression ending in a keyword
        ("SELECT x IS NULL FROM t", None),
        ("SELECT (a) FROM t", None),
        ("SELECT AS STRUCT a, b FROM t", None),
        ("(SELECT a FROM t)", None),
        ("SELECT ARRAY<STRUCT<a INT64, b STRING>>[] AS z", None),
        ("UPDATE t SET a = 1 WHERE TRUE THEN RETURN WITH ACTION a", None),
        ("DELETE FROM t WHERE TRUE THEN RETURN *", None),
        ("SELECT 'unterminated", None),
    ],
)  # fmt: skip
def test_result_columns_are_read_only_where_certain(
    sql: str, columns: tuple[str, ...] | None
) -> None:
    assert result_columns(sql) == columns


# --- the loader: refusals located at the mask ------------------------------------------------


def edited(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    text = EXAMPLE.read_text()
    assert text.count(old) == 1, old
    text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path, text


def refused(path: Path) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env={})
    return caught.value.problems


def at(path: Path, text: str, needle: str) -> str:
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return f"{path}:{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


EXAMPLE_MASK = "      Email: {with: redact, unless: [support-leads]}"


@pytest.mark.parametrize(
    ("mask", "needle", "message"),
    [
        ("      Emial: {with: redact}", "{with: redact}",
         "mask on column 'Emial', which query get_customer does not return (its columns: "
         "CustomerId, Name, Email, CreatedAt); did you mean 'Email'?"),
        ("      email: {with: redact}", "{with: redact}",
         "mask on column 'email', which query get_customer does not return (its columns: "
         "CustomerId, Name, Email, CreatedAt); did you mean 'Email'?"),
        ("      Email: {with: redact, unless: [support-lead]}", "support-lead]",
         "unknown role 'support-lead'; did you mean 'support-leads'?"),
        ("      Email: {with: scramble}", "scramble",
         "unexpected value 'scramble'; expected 'redact', 'null', 'hash' or 'last4'"),
        ("      Email: {with: redact, unles: [support-leads]}", "unles:",
         "did you mean 'unless'?"),
        ("      Email: {with: redact, unless: [support, support]}", "[support, support]",
         "a role is listed twice"),
        ("      Email: {unless: [support]}", "{unless", "with"),
        ("      Email: {with: redact, domain: email}", "email}",
         "domain names the key of a hash; this mask is with: redact"),
        ("      Email: {with: hash, domain: 'e mail'}", "'e mail'", "a name starts with a letter"),
    ],
)  # fmt: skip
def test_a_bad_mask_is_refused_where_it_is_written(
    tmp_path: Path, mask: str, needle: str, message: str
) -> None:
    path, text = edited(tmp_path, EXAMPLE_MASK, mask)
    (problem,) = refused(path)
    assert str(problem).startswith(at(path, text, needle)), str(problem)
    assert message in str(problem)


def warnings_of(path: Path) -> list[str]:
    return [str(w) for w in load_policy(path, env={}).warnings]


def test_a_column_differing_from_a_masked_one_only_in_case_is_a_warning(tmp_path: Path) -> None:
    # both come back (rows are keyed by the exact name): `email` would be answered clear
    path, text = edited(tmp_path, "SELECT CustomerId, Name, Email, CreatedAt",
                        "SELECT CustomerId, Name, Email, LOWER(Email) AS email, CreatedAt")  # fmt: skip
    (warning,) = warnings_of(path)
    assert warning == (
        f"{at(path, text, '{with: redact')}: queries.get_customer.mask.Email: query get_customer "
        "also returns email, which differs from the masked column Email only in case: it is "
        "answered unmasked (rows are keyed by the exact name); mask email too, or rename it with AS"
    )
    text = text.replace(EXAMPLE_MASK, EXAMPLE_MASK + "\n      email: {with: null}")
    path.write_text(text)
    assert warnings_of(path) == []  # both masked: nothing shows clear


WRITE_QUERY = """
  add_customer:
    identity: shop_writer
    sql: |
      {sql}
    params:
      tenant: {{type: STRING, from: claim.tenant}}
      customer_id: {{type: STRING, max_length: 36}}
      email: {{type: STRING, max_length: 200}}
    mask:
      Email: {{with: hash{domain}}}
"""
WRITE_ROUTE = "  - {path: /v1/customers, method: POST, query: add_customer, allow: [support]}\n"


def with_write(tmp_path: Path, sql: str, domain: str = "") -> tuple[Path, str]:
    text = EXAMPLE.read_text()
    text = text.replace("\nroutes:\n", WRITE_QUERY.format(sql=sql, domain=domain) + "\nroutes:\n")
    text = text.replace("\nbudgets:", "\n" + WRITE_ROUTE + "\nbudgets:")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path, text


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO Customers (TenantId, CustomerId, Name, Email, CreatedAt) VALUES (@tenant, "
        "@customer_id, 'n', @email, PENDING_COMMIT_TIMESTAMP()) THEN RETURN CustomerId, Email",
        "INSERT INTO Customers (TenantId, CustomerId, Name, Email, CreatedAt) VALUES (@tenant, "
        "@customer_id, 'n', LOWER(@email), PENDING_COMMIT_TIMESTAMP()) THEN RETURN c.Email",
        "UPDATE Customers SET Email = COALESCE(@email, Email) WHERE TenantId = @tenant AND "
        "CustomerId = @customer_id THEN RETURN CustomerId, Email",
        "UPDATE Customers SET Name = Name WHERE TenantId = @tenant AND CustomerId = @customer_id "
        "THEN RETURN CustomerId, @email AS Email",
    ],
)  # fmt: skip
def test_hashing_a_value_the_caller_sent_is_a_warning(tmp_path: Path, sql: str) -> None:
    path, text = with_write(tmp_path, sql)
    (warning,) = warnings_of(path)
    assert warning.startswith(f"{at(path, text, 'hash}')}: queries.add_customer.mask.Email.with: ")
    assert "query add_customer hashes Email, whose value it takes from a parameter: a caller " \
        "can have any value of its choice hashed with this column's key and compare" in warning  # fmt: skip


def test_the_warning_names_the_masks_sharing_the_domain(tmp_path: Path) -> None:
    sql = ("UPDATE Customers SET Email = @email WHERE TenantId = @tenant AND CustomerId = "
           "@customer_id THEN RETURN Email")  # fmt: skip
    path, text = with_write(tmp_path, sql, ", domain: email")
    text = text.replace(EXAMPLE_MASK, "      Email: {with: hash, unless: [support-leads], "
                        "domain: email}")  # fmt: skip
    path.write_text(text)
    (warning,) = warnings_of(path)
    assert "hashed with the key of domain email (also hashing get_customer.Email) and " in warning


def test_hashing_a_stored_value_on_a_write_is_no_warning(tmp_path: Path) -> None:
    sql = ("UPDATE Customers SET Name = @email WHERE TenantId = @tenant AND CustomerId = "
           "@customer_id THEN RETURN CustomerId, Email")  # fmt: skip
    path, _ = with_write(tmp_path, sql)
    assert warnings_of(path) == []


def test_with_null_unquoted_is_the_null_mode(tmp_path: Path) -> None:
    path, _ = edited(tmp_path, EXAMPLE_MASK, "      Email: {with: null}")
    (mask,) = load_policy(path, env={}).policy.queries["get_customer"].mask.values()
    assert (mask.with_, mask.unless) == ("null", [])


def test_a_mask_on_a_write_without_then_return_is_refused(tmp_path: Path) -> None:
    old = "      currency:    {type: STRING, enum: [USD, EUR, GBP], default: USD}\n"
    path, text = edited(tmp_path, old, old + "    mask:\n      OrderId: {with: hash}\n")
    (problem,) = refused(path)
    assert str(problem).startswith(at(path, text, "{with: hash}"))
    assert "create_order is DML without THEN RETURN: it returns no rows" in str(problem)


def test_then_return_columns_may_be_masked_and_select_star_waits_for_spanner(
    tmp_path: Path,
) -> None:
    returning = "PENDING_COMMIT_TIMESTAMP())\n"
    path, _ = edited(
        tmp_path,
        returning,
        "PENDING_COMMIT_TIMESTAMP())\n      THEN RETURN OrderId, CustomerId\n"
        "    mask:\n      CustomerId: {with: hash, unless: [support-leads]}\n",
    )
    loaded = load_policy(path, env={})
    assert hash_masks(loaded.policy) == ["create_order.CustomerId"]
    path, _ = edited(tmp_path, "SELECT CustomerId, Name, Email, CreatedAt", "SELECT *")
    load_policy(path, env={})  # loads: Spanner names the columns of * (at start-up)


def test_the_check_command_prints_located_mask_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, text = edited(tmp_path, EXAMPLE_MASK, "      Emial: {with: hash}")
    assert main(["policy", "check", str(path)]) == 2
    assert f"{at(path, text, '{with: hash}')}: queries.get_customer.mask.Emial: mask on column" in (
        capsys.readouterr().err
    )


def test_hash_masks_need_a_key_note_from_policy_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPANGATE_MASK_KEY", raising=False)
    path, _ = edited(tmp_path, EXAMPLE_MASK, "      Email: {with: hash, unless: [support-leads]}")
    assert main(["policy", "check", str(path)]) == 0
    assert "hash masks (get_customer.Email) need SPANGATE_MASK_KEY" in capsys.readouterr().err


# --- the analysed columns (start-up, reload, check --database) -------------------------------


def test_analysed_columns_decide_names_exactly_and_last4_wants_a_string() -> None:
    columns = [("CustomerId", "STRING"), ("Total", "INT64"), ("Tags", "ARRAY<STRING>")]
    masks = {
        "customerid": Mask(with_="redact"),
        "Total": Mask(with_="last4"),
        "Tags": Mask(with_="last4"),
        "CustomerId": Mask(with_="hash"),
    }
    found = column_findings("q", masks, columns)
    assert found == [
        (("queries", "q", "mask", "customerid"),
         "mask on column 'customerid', which query q does not return (its columns: CustomerId, "
         "Total, Tags); did you mean 'CustomerId'?"),
        (("queries", "q", "mask", "Total", "with"),
         "last4 keeps the last four characters of a STRING; column Total of query q is INT64: "
         "use redact, null or hash"),
    ]  # fmt: skip


# --- who sees which column clear -------------------------------------------------------------


def masked_data(leads: list[dict[str, Any]], allow: list[str] | None = None) -> dict[str, Any]:
    data = base()
    data["roles"]["leads"] = leads
    data["queries"]["get_thing"]["sql"] = (
        "SELECT Id, Owner, Secret FROM Things WHERE Tenant = @tenant AND Id = @id"
    )
    data["queries"]["get_thing"]["mask"] = {
        "Owner": {"with": "hash", "unless": ["leads", "staff"]},
        "Secret": {"with": "redact", "unless": ["leads"]},
    }
    if allow is not None:
        data["routes"][0]["allow"] = allow
    return data


def masked_policy(leads: list[dict[str, Any]], allow: list[str] | None = None) -> Any:
    return compiled(masked_data(leads, allow))


def test_any_role_the_caller_holds_unmasks_not_only_the_one_that_allowed() -> None:
    policy = masked_policy([{"groups": ["leads"]}], allow=["staff", "leads"])
    get = request_facts("GET /things/T-1")
    staff = decide(policy, get, caller(policy, groups=["staff"], tenant="t1"))
    assert (staff.allow, staff.masked) == (True, ("Secret",))
    lead = decide(policy, get, caller(policy, groups=["staff", "leads"], tenant="t1"))
    assert (lead.rule, lead.masked) == ("staff", ())  # staff allowed it; leads unmasks
    # a role the route does not allow still unmasks for a caller that gets in
    policy = masked_policy([{"groups": ["leads"]}])
    lead = decide(policy, get, caller(policy, groups=["staff", "leads"], tenant="t1"))
    assert (lead.rule, lead.masked) == ("staff", ())


def test_a_delegated_token_unmasks_only_through_an_entry_that_admits_it() -> None:
    get = request_facts("GET /things/T-1")
    claims = {"groups": ["staff", "leads"], "tenant": "t1", "act": {"sub": "agent-7"}}
    staff_for_agents = [{"groups": ["staff"], "delegated": True}]
    for leads, masked in (
        ([{"groups": ["leads"]}], ("Owner", "Secret")),  # the person's role: not the agent's
        ([{"groups": ["leads"], "delegated": False}], ("Owner", "Secret")),
        ([{"groups": ["leads"], "delegated": True}], ()),
        ([{"groups": ["leads"], "claims": {"act.sub": "agent-7"}}], ()),
        ([{"groups": ["leads"], "claims": {"act.sub": "other-agent"}}], ("Owner", "Secret")),
    ):
        data = masked_data(leads, allow=["agents"])
        data["roles"]["agents"] = staff_for_agents
        data["queries"]["get_thing"]["mask"]["Owner"]["unless"] = ["leads"]
        policy = compiled(data)
        decision = decide(policy, get, caller(policy, **claims))
        assert decision.allow, decision.reason
        assert decision.masked == masked, leads


def test_a_denied_call_masks_nothing_and_no_unless_masks_for_everyone() -> None:
    policy = masked_policy([{"groups": ["leads"]}])
    get = request_facts("GET /things/T-1")
    denied = decide(policy, get, caller(policy, groups=["leads"], tenant="t1"))
    assert (denied.allow, denied.masked) == (False, ())
    query = policy.queries["get_thing"].model
    assert masked_columns(query, {"staff", "leads", "blocked"}) == ()
    query = query.model_copy(update={"mask": {"Id": Mask(with_="null")}})
    assert masked_columns(query, {"staff", "leads"}) == ("Id",)


# --- explain and policy test -----------------------------------------------------------------

POLICY = compile_policy(load_policy(EXAMPLE, env={}))


def test_explain_shows_each_masked_column_and_why() -> None:
    customer = request_facts("GET /v1/customers/C-1")
    support = caller(POLICY, groups=["support"], tenant="t1")
    lines = render_explanation(POLICY, explain(POLICY, customer, support)).splitlines()
    assert (
        "mask      Email: masked (redact): none of the roles ['support-leads'] holds for this "
        "token" in lines
    )
    lead = caller(POLICY, groups=["support", "support-leads"], tenant="t1")
    ex = explain(POLICY, customer, lead)
    assert (
        "mask      Email: clear (else redact): role support-leads holds (unless "
        "['support-leads'])" in render_explanation(POLICY, ex).splitlines()
    )
    assert explanation_record(ex)["masks"] == [
        {"column": "Email", "with": "redact", "masked": False, "unless": ["support-leads"],
         "why": "role support-leads holds (unless ['support-leads'])"}
    ]  # fmt: skip
    orders = explain(POLICY, request_facts("GET /v1/orders"), support)
    assert explanation_record(orders)["masks"] == []
    assert not any(line.startswith("mask ") for line in render_explanation(POLICY, orders).split("\n"))


def test_the_explain_command_says_masked_for_support(capsys: pytest.CaptureFixture[str]) -> None:
    claims = json.dumps({"iss": "okta", "groups": ["support"], "tenant": "t1"})
    args = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", claims]
    assert main([*args, "GET", "/v1/customers/C-1"]) == 0
    assert "mask      Email: masked (redact)" in capsys.readouterr().out


CASES = """\
policy: {policy}
cases:
  - name: support sees the email masked
    claims: {{iss: okta, groups: [support], tenant: t1}}
    request: GET /v1/customers/C-1
    expect: {{allow: true, masked: [{masked}]}}
"""


def test_policy_test_compares_masked_columns_as_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES.format(policy=EXAMPLE, masked="Email"))
    assert main(["policy", "test", str(cases)]) == 0
    cases.write_text(CASES.format(policy=EXAMPLE, masked=""))
    assert main(["policy", "test", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  " in out and '- masked: []' in out and '+ masked: ["Email"]' in out


def test_policy_test_refuses_an_unknown_masked_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    text = CASES.format(policy=EXAMPLE, masked="email")
    cases.write_text(text)
    assert main(["policy", "test", str(cases)]) == 2
    err = capsys.readouterr().err
    line = text.splitlines().index(next(x for x in text.splitlines() if "masked: [email]" in x)) + 1
    column = text.splitlines()[line - 1].index("email") + 1
    assert re.search(
        rf"{re.escape(str(cases))}:{line}:{column}: .*no query masks a column 'email'; "
        r"did you mean 'Email'\?",
        err,
    ), err


def test_masked_on_a_case_expected_to_be_denied_is_a_located_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    text = f"""\
policy: {EXAMPLE}
cases:
  - name: a suspended support lead is denied
    claims: {{iss: okta, groups: [support, support-leads, suspended], tenant: t1}}
    request: GET /v1/customers/C-1
    expect: {{allow: false, reason: denied-by-role, masked: []}}
"""
    cases.write_text(text)
    assert main(["policy", "test", str(cases)]) == 2
    err = capsys.readouterr().err
    line = 6
    column = text.splitlines()[line - 1].index("[]") + 1
    assert f"{cases}:{line}:{column}: cases[0].expect.masked: masked on a case expected to be " \
        "denied: a denied call runs nothing and masks nothing, so this could never fail" in err  # fmt: skip


AGENT_FOR_LEAD = """\
policy: policy.yaml
cases:
  - name: an agent acting for a support lead reads a customer, the email masked
    claims:
      {iss: okta, sub: 00u-lead-1, groups: [support, support-leads], tenant: t1,
       scp: [orders.read], act: {sub: order-agent}}
    request: GET /v1/customers/C-1
    expect: {allow: true, roles: [agent-for-support], masked: [Email]}
"""


def test_an_agent_acting_for_a_support_lead_sees_the_email_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example, with agents acting for support people let in to customers: the lead's
    support-leads role does not hold for a delegated token, so the email stays masked, unless
    the role's entry admits delegated tokens."""
    text = EXAMPLE.read_text().replace(
        "    query: get_customer           # people only: no agent, on its own or acting for a "
        "person\n    allow: [support]\n",
        "    query: get_customer\n    allow: [support, agent-for-support]\n",
    )
    assert "allow: [support, agent-for-support]\n    deny: [suspended]\n  - path: /v1/orders\n" \
        in text  # fmt: skip
    (tmp_path / "policy.yaml").write_text(text)
    cases = tmp_path / "cases.yaml"
    cases.write_text(AGENT_FOR_LEAD)
    assert main(["policy", "test", str(cases)]) == 0, capsys.readouterr()
    lead = "    - groups: [support-leads]     # their own tokens only (an agent acting for one does not)"
    (tmp_path / "policy.yaml").write_text(
        text.replace(lead, "    - {groups: [support-leads], delegated: true}")
    )
    assert main(["policy", "test", str(cases)]) == 1  # now the agent sees it clear
    out = capsys.readouterr().out
    assert '- masked: ["Email"]' in out and "+ masked: []" in out


def test_the_example_masks_email_for_everyone_but_support_leads() -> None:
    query = POLICY.queries["get_customer"].model
    assert {c: (m.with_, m.unless) for c, m in query.mask.items()} == {
        "Email": ("redact", ["support-leads"])
    }
    assert where_in(EXAMPLE, "Email: {with: redact")  # written in the example, for readers
