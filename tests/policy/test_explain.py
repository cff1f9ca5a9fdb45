"""``spangate policy explain``: the decision trace, from claims or from an unverified token."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys

import jwt
import pytest
from builders import EXAMPLE, where_in
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.verify import NOT_A_JWT, NOT_ACCEPTED, NOT_STRICT
from gateway.cli import main
from gateway.policy.compiled import compile_policy
from gateway.policy.explain import UNVERIFIED, explain, render_explanation, unverified_claims
from gateway.policy.load import load_policy
from gateway.policy.simulate import SimulationError, principal_for, request_facts

POLICY = compile_policy(load_policy(EXAMPLE, env={}))
ISS = POLICY.model.issuers["okta"].issuer
AGENT = {"iss": "okta", "sub": "agent-7", "scp": ["orders.read"], "tenant": "t1"}


def test_the_trace_names_roles_entries_route_and_parameter_sources() -> None:
    ex = explain(
        POLICY,
        request_facts("GET /v1/orders?status=PAID&tenant=t2"),
        principal_for(POLICY.model, AGENT),
    )
    text = render_explanation(POLICY, ex)
    lines = text.splitlines()
    assert lines[0] == "request   GET /v1/orders?status=PAID&tenant=t2"
    assert (
        lines[1]
        == "caller    issuer okta, sub agent-7, client -, scopes ['orders.read'], groups []"
    )
    route = where_in(EXAMPLE, "path: /v1/orders\n    method: GET")
    assert f"route     routes[1] GET /v1/orders  ({route})" in lines
    assert "  - support: does not hold - support staff, any token in the support group" in lines
    assert f"      entry 0 ({where_in(EXAMPLE, 'groups: [support]')}): fails" in lines
    assert "        - groups: in none of the groups ['support']" in lines
    assert "  + order-agent: holds" in lines
    assert "        + scopes: has scopes ['orders.read']" in lines
    assert "  - order-writer: does not hold  (not named by this route)" in lines
    assert "decision  ALLOW (allowed) by role order-agent" in lines
    assert (
        "query     list_orders (read-only) as identity shop_reader (database role shop_reader)"
        in lines
    )
    assert 'param     tenant = "t1"  (claim tenant)' in lines
    assert 'param     status = "PAID"  (query)' in lines
    assert "param     limit = 20  (default)" in lines
    assert 'ignored   tenant = "t2"  (a caller value for a claim-bound parameter)' in lines


def test_a_denial_says_its_reason_code_and_status() -> None:
    suspended = principal_for(POLICY.model, {**AGENT, "groups": ["suspended"]})
    ex = explain(POLICY, request_facts("GET /v1/orders/O-1"), suspended)
    assert ex.decision.reason == "denied-by-role"
    assert "decision  DENY 403 denied-by-role by role suspended: denied by role 'suspended'" in (
        render_explanation(POLICY, ex).splitlines()
    )
    nowhere = explain(POLICY, request_facts("GET /v2/x"), suspended)
    assert "route     none" in render_explanation(POLICY, nowhere)


def test_the_cli_exits_0_on_allow_1_on_deny_and_prints_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    claims = json.dumps(AGENT)
    assert (
        main(
            [
                "policy",
                "explain",
                "--policy",
                str(EXAMPLE),
                "--claims",
                claims,
                "GET",
                "/v1/orders/O-1",
            ]
        )
        == 0
    )
    assert "claims given with --claims: no token was verified" in capsys.readouterr().out
    args = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", claims, "--json"]
    assert main([*args, "GET", "/v1/customers/C-1"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["decision"] == {
        "allow": False,
        "reason": "no-allow-role",
        "status": 403,
        "rule": None,
        "detail": "no role that this route allows holds for this token",
    }
    assert record["route"]["path"] == "/v1/customers/{customer_id}"
    assert [r["role"] for r in record["roles"] if r["holds"]] == ["order-agent"]
    body = json.dumps({"order_id": "O-9", "customer_id": "C-1", "total_cents": 5})
    writer = json.dumps({"iss": "okta", "scp": ["orders.write"], "tenant": "t1"})
    assert (
        main(
            [
                "policy",
                "explain",
                "--policy",
                str(EXAMPLE),
                "--claims",
                writer,
                "--body",
                body,
                "--json",
                "POST",
                "/v1/orders",
            ]
        )
        == 0
    )
    params = json.loads(capsys.readouterr().out)["params"]
    assert {p["name"]: p["source"] for p in params} == {
        "tenant": "claim tenant",
        "order_id": "body",
        "customer_id": "body",
        "total_cents": "body",
        "currency": "default",
    }


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["policy", "explain", "--policy", str(EXAMPLE)]
    assert main([*base, "--claims", "{", "GET", "/v1/orders"]) == 2
    assert "--claims is not JSON" in capsys.readouterr().err
    surrogate = '{"iss": "okta", "groups": ["support"], "tenant": "\\ud800"}'
    assert main([*base, "--claims", surrogate, "GET", "/v1/orders"]) == 2  # not a traceback
    assert "--claims is not JSON: a string holds a lone UTF-16 surrogate" in capsys.readouterr().err
    payload = json.dumps({"iss": "okta", "sub": "x", "tenant": "\ud800"}, ensure_ascii=False)
    segments = [
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (b'{"alg":"RS256"}', payload.encode("utf-8", "surrogatepass"))
    ]  # the surrogate's own bytes, not an escape
    assert main([*base, "--token", ".".join([*segments, "c2ln"]), "GET", "/v1/orders"]) == 2
    assert "not strict JSON" in capsys.readouterr().err
    assert main([*base, "--claims", '{"iss": "nope"}', "GET", "/v1/orders"]) == 2
    assert "iss 'nope' is no issuer of the policy" in capsys.readouterr().err
    assert main([*base, "--token", "not.a.jwt", "GET", "/v1/orders"]) == 2
    assert f"{NOT_A_JWT} (the gateway answers 401 token-malformed)" in capsys.readouterr().err


def token(claims: dict[str, object], alg: str = "ES256") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm=alg)


NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def test_a_token_is_read_without_verifying_and_says_so() -> None:
    good = {
        "iss": ISS,
        "sub": "u",
        "aud": "api://shop",
        "exp": NOW.timestamp() + 60,
        "scp": ["orders.read"],
    }
    claims, notes = unverified_claims(POLICY.model, token(good), now=NOW)
    assert claims["scp"] == ["orders.read"]
    assert notes == [UNVERIFIED]
    stale = {**good, "exp": NOW.timestamp() - 60, "aud": "other"}
    _, notes = unverified_claims(POLICY.model, token(stale), now=NOW)
    assert notes[0] == UNVERIFIED
    assert any("expired at 2026-11-24T11:59:00Z" in n and "token-expired" in n for n in notes)
    assert any("audience-mismatch" in n for n in notes)
    with pytest.raises(SimulationError, match="no issuer of the policy"):
        unverified_claims(POLICY.model, token({**good, "iss": "https://evil.example"}), now=NOW)


def raw_token(header: str, payload: str) -> str:
    """A token of exactly this header and payload JSON text (pyjwt's encoder cannot write a
    member twice or NaN); explain does not check the signature."""
    parts = [base64.urlsafe_b64encode(p.encode()).rstrip(b"=").decode() for p in (header, payload)]
    return ".".join([*parts, "c2ln"])


GOOD = {"iss": ISS, "sub": "u", "aud": "api://shop", "exp": NOW.timestamp() + 60}
HEADER = '{"alg": "ES256", "typ": "JWT"}'


def with_member(extra: str) -> str:
    """GOOD's JSON with ``extra`` (raw JSON members) appended."""
    return json.dumps(GOOD)[:-1] + ", " + extra + "}"


@pytest.mark.parametrize(
    ("header", "payload", "said"),
    [
        (HEADER, with_member('"groups": ["support"], "groups": ["admin"]'), NOT_STRICT),
        (HEADER, with_member('"sub": "someone-else"'), NOT_STRICT),
        (HEADER, with_member('"tenant": NaN'), NOT_STRICT),
        (HEADER, with_member('"act": {"sub": "a", "sub": "b"}'), NOT_STRICT),  # nested
        ('{"alg": "HS256", "alg": "ES256"}', json.dumps(GOOD), NOT_STRICT),
        ('{"alg": "ES256", "crit": ["urn:x"], "urn:x": 1}', json.dumps(GOOD), NOT_ACCEPTED),
        (HEADER, "[1, 2]", NOT_A_JWT),
    ],
    ids=["claim-twice", "sub-twice", "nan", "nested-twice", "header-twice", "crit", "no-object"],
)
def test_a_token_the_gateway_refuses_as_malformed_is_not_explained(
    header: str, payload: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Explain reads the token as the verifier does (strict JSON): a lenient reader would take
    one of the two members and explain a caller the gateway never lets in."""
    jwt_text = raw_token(header, payload)
    with pytest.raises(SimulationError) as refused:
        unverified_claims(POLICY.model, jwt_text, now=NOW)
    assert str(refused.value) == f"{said} (the gateway answers 401 token-malformed)"
    base = ["policy", "explain", "--policy", str(EXAMPLE), "--token", jwt_text]
    assert main([*base, "GET", "/v1/customers/C-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err  # one line, no traceback
    assert said in err and "Traceback" not in err
    assert "Invalid" not in err and "the member" not in err  # not pyjwt's or the reader's words


def test_a_strict_token_is_explained_and_one_without_iss_is_noted() -> None:
    claims, notes = unverified_claims(POLICY.model, raw_token(HEADER, json.dumps(GOOD)), now=NOW)
    assert claims == GOOD and notes == [UNVERIFIED]
    no_iss = {k: v for k, v in GOOD.items() if k != "iss"}
    _, notes = unverified_claims(POLICY.model, raw_token(HEADER, json.dumps(no_iss)), now=NOW)
    assert "the token has no iss claim: the gateway answers 401 token-malformed" in notes
    assert not any("issuer-unknown" in n for n in notes)


def test_the_cli_reads_a_token_from_stdin() -> None:
    exp = dt.datetime.now(dt.UTC).timestamp() + 600
    claims = {
        "iss": ISS,
        "sub": "u",
        "aud": "api://shop",
        "exp": exp,
        "groups": ["support"],
        "tenant": "t1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "policy",
            "explain",
            "--policy",
            str(EXAMPLE),
            "--token",
            "-",
            "GET",
            "/v1/customers/C-1",
        ],
        input=token(claims) + "\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"note      {UNVERIFIED}" in done.stdout
    assert "decision  ALLOW (allowed) by role support" in done.stdout


@pytest.mark.parametrize(
    "exp", [-(10**400), -1e300, 10**400, "soon", True], ids=["-10^400", "-1e300", "10^400", "str", "bool"]
)
def test_a_token_whose_exp_is_no_usable_date_is_noted_not_a_crash(
    exp: object, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = {"iss": ISS, "sub": "u", "aud": "api://shop", "groups": ["support"], "tenant": "t1"}
    jwt_text = token({**claims, "exp": exp})
    base = ["policy", "explain", "--policy", str(EXAMPLE), "--token", jwt_text]
    assert main([*base, "GET", "/v1/customers/C-1"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    notes = [line for line in out.splitlines() if line.startswith("note")]
    if exp == -1e300:  # a finite float: the gateway finds it in the past
        assert any("expired at -1e+300" in n and "401 token-expired" in n for n in notes), notes
    else:
        assert any(
            "the token's exp claim is not a number: the gateway answers 401 token-malformed" in n
            for n in notes
        ), notes


def test_a_token_with_cnf_or_without_exp_is_noted(capsys: pytest.CaptureFixture[str]) -> None:
    claims = {"iss": ISS, "sub": "u", "aud": "api://shop", "groups": ["support"], "tenant": "t1"}
    exp = dt.datetime.now(dt.UTC).timestamp() + 600
    base = ["policy", "explain", "--policy", str(EXAMPLE), "--token"]
    bound = token({**claims, "exp": exp, "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}})
    assert main([*base, bound, "GET", "/v1/customers/C-1"]) == 0
    out = capsys.readouterr().out
    assert (
        "note      the token has a cnf claim (it is bound to a DPoP key (RFC 9449)): the gateway "
        "answers 401 token-sender-constrained (it accepts bearer tokens only)"
    ) in out.splitlines()
    assert main([*base, token(claims), "GET", "/v1/customers/C-1"]) == 0
    out = capsys.readouterr().out
    assert "note      the token has no exp claim: the gateway answers 401 token-malformed" in out
    assert main([*base, token({**claims, "exp": exp}), "GET", "/v1/customers/C-1"]) == 0
    assert "401" not in capsys.readouterr().out  # a good token: no refusal noted


def test_explain_shows_the_budget_an_allowed_call_spends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", json.dumps(AGENT)]
    assert main([*args, "GET", "/v1/orders"]) == 0
    out = capsys.readouterr().out
    assert (
        "budget    calls 60/min (role order-agent, per subject), "
        "rows 5000/hour (role order-agent, per subject)\n"
    ) in out
    assert main([*args, "--json", "GET", "/v1/orders"]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] == [
        {"kind": "calls", "limit": "60/min", "role": "order-agent", "per": "subject"},
        {"kind": "rows", "limit": "5000/hour", "role": "order-agent", "per": "subject"},
    ]
    support = json.dumps({"iss": "okta", "sub": "s-1", "groups": ["support"], "tenant": "t1"})
    base = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", support]
    assert main([*base, "GET", "/v1/orders"]) == 0
    assert (
        "budget    calls 6000/min (role support, per subject), "
        "rows 1000000/hour (role support, per subject)\n"
    ) in capsys.readouterr().out  # people: a ceiling far above what a person does
    writer = json.dumps({"iss": "okta", "sub": "w-1", "scp": ["orders.write"], "tenant": "t1"})
    body = json.dumps({"order_id": "O-1", "customer_id": "C-1", "total_cents": 1})
    args = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", writer, "--body", body]
    assert main([*args, "POST", "/v1/orders"]) == 0
    assert "budget    none\n" in capsys.readouterr().out  # order-writer has no budget
    # The agent acting for a support person (RFC 8693) holds agent-for-support only: its budget
    # is the agent's (per actor), never none (regression: the example left delegated calls free).
    delegated = dict(json.loads(support), scp=["orders.read"], act={"sub": "order-agent"})
    args = ["policy", "explain", "--policy", str(EXAMPLE), "--claims", json.dumps(delegated)]
    assert main([*args, "GET", "/v1/orders"]) == 0
    assert (
        "budget    calls 60/min (role agent-for-support, per actor), "
        "rows 5000/hour (role agent-for-support, per actor)\n"
    ) in capsys.readouterr().out
