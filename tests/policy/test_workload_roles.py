"""Policies with workload issuers: roles read the presets' claims (``kubernetes.io.namespace``,
``repository``, ``email``), policy tests simulate such tokens with the preset's rules, and a role
that routes allow must say who the caller is when anyone can get the issuer's tokens."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import jwt
import pytest
from builders import REPO
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.presets import principal_for_issuer
from gateway.errors import PolicyError
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import decide
from gateway.policy.explain import UNVERIFIED, unverified_claims
from gateway.policy.load import load_policy_data
from gateway.policy.model import Policy
from gateway.policy.regex import compile_regex
from gateway.policy.shadow import shadow_principal
from gateway.policy.simulate import SimulationError, principal_for, request_facts
from gateway.policy.validate import validate_policy

CLUSTER = "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c"
GATEWAY = "https://spangate.example"

POLICY: dict[str, Any] = {
    "version": 1,
    "spanner": {"project": "p", "instance": "i", "database": "d"},
    "issuers": {
        "cluster": {"issuer": CLUSTER, "audience": GATEWAY, "preset": "kubernetes"},
        "google": {
            "issuer": "https://accounts.google.com",
            "audience": GATEWAY,
            "preset": "google",
        },
        "github": {
            "issuer": "https://token.actions.githubusercontent.com",
            "audience": GATEWAY,
            "preset": "github-actions",
        },
    },
    "identities": {"reader": {"database_role": "reader"}},
    "roles": {
        "payments": [{"issuer": "cluster", "claims": {"kubernetes.io.namespace": "payments"}}],
        "deployer": [
            {"issuer": "google", "claims": {"email": "deployer@shop.iam.gserviceaccount.com"}},
            {
                "issuer": "github",
                "claims": {"repository": "octo-org/shop", "environment": "prod"},
            },
        ],
    },
    "queries": {
        "get_thing": {
            "identity": "reader",
            "sql": "SELECT Id FROM Things WHERE Id = @id",
            "params": {"id": {"type": "STRING"}},
        },
    },
    "routes": [
        {
            "path": "/things/{id}",
            "method": "GET",
            "query": "get_thing",
            "allow": ["payments", "deployer"],
        },
    ],
}


def policy(**roles: Any) -> dict[str, Any]:
    data = copy.deepcopy(POLICY)
    data["roles"].update(roles)
    if roles:
        data["routes"][0]["allow"] = [*data["routes"][0]["allow"], *roles]
    return data


def allowed(claims: dict[str, Any]) -> bool:
    compiled = compile_policy(load_policy_data(policy(), base_dir=REPO))
    principal = principal_for(compiled.model, claims)
    return decide(compiled, request_facts("GET /things/t1"), principal).allow


SA = {"iss": "cluster", "sub": "system:serviceaccount:payments:api"}


def test_a_role_reads_the_nested_kubernetes_io_claims() -> None:
    ns = {"namespace": "payments", "serviceaccount": {"name": "api", "uid": "u"}}
    assert allowed({**SA, "kubernetes.io": ns})
    other = {**ns, "namespace": "billing"}
    assert not allowed(
        {"iss": "cluster", "sub": "system:serviceaccount:billing:api", "kubernetes.io": other}
    )


def test_policy_tests_simulate_with_the_presets_rules() -> None:
    model = Policy.model_validate(policy())
    with pytest.raises(SimulationError, match="email-unverified"):
        principal_for(model, {"iss": "google", "email": "a@b.example", "email_verified": False})
    with pytest.raises(SimulationError, match="token-malformed"):
        principal_for(model, {"iss": "cluster", "sub": "api"})
    with pytest.raises(SimulationError, match="api-server-token"):
        principal_for(model, {**SA, "aud": [GATEWAY, "https://kubernetes.default.svc"]})
    google = principal_for(
        model,
        {"iss": "google", "email": "deployer@shop.iam.gserviceaccount.com", "email_verified": True},
    )
    assert google.subject == "deployer@shop.iam.gserviceaccount.com"
    assert allowed(
        {"iss": "google", "email": "deployer@shop.iam.gserviceaccount.com", "email_verified": True}
    )
    gh = {"iss": "github", "sub": "repo:octo-org/shop:environment:prod"}
    assert allowed({**gh, "repository": "octo-org/shop", "environment": "prod"})
    assert not allowed({**gh, "repository": "octo-org/shop", "environment": "staging"})
    assert not allowed({**gh, "repository": "evil/shop", "environment": "prod"})


def findings(data: dict[str, Any]) -> list[tuple[Any, str]]:
    return [(w, m) for w, m in validate_policy(Policy.model_validate(data)) if "test who" in m]


def test_the_example_roles_say_who_the_caller_is() -> None:
    assert findings(policy()) == []


@pytest.mark.parametrize(
    ("entries", "issuers"),
    [
        ([{"authenticated": True}], {"google", "github"}),
        ([{"issuer": "github"}], {"github"}),
        ([{"issuer": "github", "claims": {"ref": "refs/heads/main"}}], {"github"}),
        ([{"issuer": "github", "claims": {"repository": {"present": True}}}], {"github"}),
        ([{"issuer": "google", "claims": {"email_verified": True}}], {"google"}),
        ([{"claims": {"email": "x@p.iam.gserviceaccount.com"}}], {"github"}),
    ],
)
def test_an_allow_role_open_to_anyone_with_a_token_is_a_load_error(
    entries: list[dict[str, Any]], issuers: set[str]
) -> None:
    found = findings(policy(anyone=entries))
    assert {w for w, _ in found} == {("roles", "anyone", 0)}
    assert {m.split("issuer '")[1].split("'")[0] for _, m in found} == issuers


@pytest.mark.parametrize(
    "entries",
    [
        [{"issuer": "cluster"}],  # the cluster's own tokens: only its workloads get them
        [{"issuer": "github", "claims": {"repository_owner": "octo-org"}}],
        [{"issuer": "github", "claims": {"sub": {"matches": "repo:octo-org/.*"}}}],
        [{"issuer": "google", "claims": {"email": {"matches": r".*@shop\.iam\.gserviceaccount\.com"}}}],
        [{"issuer": "github", "claims": {"repository_id": ["1", "2"]}}],
    ],
)
def test_pinned_or_closed_entries_pass(entries: list[dict[str, Any]]) -> None:
    assert findings(policy(anyone=entries)) == []


PUBLIC_REUSABLE = "octo-org/shared/.github/workflows/deploy.yml@refs/heads/main"


@pytest.mark.parametrize(
    "claims",
    [
        # the reusable workflow a job calls: the same for every repository allowed to call it
        {"job_workflow_ref": PUBLIC_REUSABLE},
        # a sub template without the repository: anyone's job can produce these
        {"sub": "environment:prod"},
        {"sub": "ref:refs/heads/main"},
        {"sub": f"job_workflow_ref:{PUBLIC_REUSABLE}"},
        {"sub": "environment:prod:repository_owner:octo-org"},  # a name, not the id
        {"sub": ["repo:octo-org/shop:environment:prod", "environment:prod"]},
        {"sub": {"matches": "repo:.*"}},
        {"sub": {"matches": "environment:prod|repo:octo-org/.*"}},
        {"sub": {"matches": ".*repo:octo-org/.*"}},
        {"sub": {"matches": "repository_owner_id:1.*"}},
        {"sub": {"matches": "(?i)repo:octo-org/.*"}},
    ],
)
def test_github_claims_a_stranger_can_reproduce_pin_nothing(claims: dict[str, Any]) -> None:
    found = findings(policy(anyone=[{"issuer": "github", "claims": claims}]))
    assert [w for w, _ in found] == [("roles", "anyone", 0)]
    assert "does not say who" in found[0][1]
    if "sub" in claims:
        assert "starts with repo:OWNER/" in found[0][1]


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "repo:octo-org/shop:environment:prod"},
        {"sub": ["repo:octo-org/shop:ref:refs/heads/main", "repo:octo-org/api:environment:prod"]},
        {"sub": {"matches": "repo:octo-org/shop:ref:refs/heads/(main|release)"}},
        {"sub": {"matches": "^(repo:octo-org/shop:.*|repo:octo-labs/shop:.*)$"}},
        {"sub": "repository_owner_id:123:environment:prod"},
        {"sub": "environment:prod:repository_id:456"},
        {"sub": {"matches": "repository_owner_id:123:.*"}},
        {"job_workflow_ref": PUBLIC_REUSABLE, "repository_owner": "octo-org"},
    ],
)
def test_github_claims_that_name_the_owner_pin(claims: dict[str, Any]) -> None:
    assert findings(policy(anyone=[{"issuer": "github", "claims": claims}])) == []


PROBE_SA = "x@spangate-probe-123.iam.gserviceaccount.com"
# What a stranger's token can carry: an owner of the stranger's own.
FOREIGN = {
    "email": PROBE_SA,
    "repository": "spangate-probe/x",
    "workflow_ref": "spangate-probe/x/.github/workflows/deploy.yml@refs/heads/main",
}


@pytest.mark.parametrize(
    ("issuer", "claim", "pattern", "stranger"),
    [
        ("google", "email", ".*", PROBE_SA),
        ("google", "email", ".+@.+", PROBE_SA),
        ("google", "email", "deployer@.*", "deployer@spangate-probe-123.iam.gserviceaccount.com"),
        ("google", "email", r".*@.*\.iam\.gserviceaccount\.com", PROBE_SA),
        # each unescaped . is any character: the rule cannot tell, and asks for \.
        ("google", "email", ".*@shop.iam.gserviceaccount.com", None),
        ("google", "email", r"deployer@shop\.iam\.gserviceaccount\.com|.*", PROBE_SA),
        # domains every project shares: the account's name says whose it is
        ("google", "email", r".*@developer\.gserviceaccount\.com",
         "999999999999-compute@developer.gserviceaccount.com"),
        ("google", "email", r".*@cloudbuild\.gserviceaccount\.com",
         "999999999999@cloudbuild.gserviceaccount.com"),
        ("google", "email", r"service-.*@gcp-sa-pubsub\.iam\.gserviceaccount\.com",
         "service-999999999999@gcp-sa-pubsub.iam.gserviceaccount.com"),
        ("google", "sub", "1085.*", "108599999999999999999"),
        ("github", "repository", "octo-.*", "octo-spangate-probe/x"),
        ("github", "repository", ".*/shop", "spangate-probe/shop"),
        ("github", "workflow_ref", ".*/.github/workflows/deploy.yml@refs/heads/main",
         "spangate-probe/x/.github/workflows/deploy.yml@refs/heads/main"),
        ("github", "repository_owner", "[a-z].*", "spangate-probe"),
        ("github", "repository_owner", "octo-.*", "octo-spangate-probe"),
        ("github", "repository_id", "[0-9]+", "999999999"),
        ("github", "enterprise", ".*", "spangate-probe"),
    ],
)
def test_a_pattern_that_does_not_spell_out_the_owner_pins_nothing(
    issuer: str, claim: str, pattern: str, stranger: str | None
) -> None:
    found = findings(policy(anyone=[{"issuer": issuer, "claims": {claim: {"matches": pattern}}}]))
    assert [w for w, _ in found] == [("roles", "anyone", 0)]
    assert f"its test of {claim} does not say who ({claim}: " in found[0][1]
    if stranger is not None:  # a stranger's own owner passes the test
        assert compile_regex(pattern).fullmatch(stranger)


@pytest.mark.parametrize(
    ("issuer", "claim", "test"),
    [
        ("google", "email", {"matches": r".*@shop\.iam\.gserviceaccount\.com"}),
        ("google", "email", {"matches": r"(deployer|reporter)@shop\.iam\.gserviceaccount\.com"}),
        ("google", "email", {"matches": r"^.*@shop-prod\.iam\.gserviceaccount\.com$"}),
        ("google", "email", {"matches": "[^@]+@shop[.]iam[.]gserviceaccount[.]com"}),
        ("google", "email", "123456789012-compute@developer.gserviceaccount.com"),
        ("google", "sub", {"matches": "108562830391273012345|108562830391273099999"}),
        ("github", "repository", {"matches": "octo-org/.*"}),
        ("github", "workflow_ref", {"matches": "octo-org/shop/.github/workflows/deploy.yml@.*"}),
        ("github", "repository_owner", {"matches": "octo-org|octo-labs"}),
        ("github", "repository_id", {"matches": "(123|456)"}),
        ("github", "enterprise", {"matches": "octo-enterprise"}),
    ],
)
def test_a_pattern_that_spells_out_the_owner_pins(issuer: str, claim: str, test: Any) -> None:
    assert findings(policy(anyone=[{"issuer": issuer, "claims": {claim: test}}])) == []
    if isinstance(test, dict) and claim in FOREIGN:
        assert not compile_regex(test["matches"]).fullmatch(FOREIGN[claim])


def test_a_delegated_entry_is_held_to_the_same_rule() -> None:
    entry = {"issuer": "google", "delegated": True, "claims": {"email": {"matches": ".*"}}}
    assert [w for w, _ in findings(policy(anyone=[entry]))] == [("roles", "anyone", 0)]


@pytest.mark.parametrize(
    ("issuer", "claims"),
    [
        ("github", {"repository_id": 123456789}),  # YAML reads an unquoted id as a number
        ("github", {"repository_owner_id": [123, "456"], "repository": "octo-org/shop"}),
        ("github", {"repository": "octo-org/shop", "actor_id": 789}),
        ("google", {"sub": 108562830391273012345}),
    ],
)
def test_a_number_for_a_string_claim_is_a_load_error(issuer: str, claims: dict[str, Any]) -> None:
    data = policy(anyone=[{"issuer": issuer, "claims": claims}])
    data["roles"]["blocked"] = [{"issuer": issuer, "claims": claims}]  # a deny never denying
    data["routes"][0]["deny"] = ["blocked"]
    found = [
        (w, m)
        for w, m in validate_policy(Policy.model_validate(data))
        if "is a string" in m
    ]
    path = next(p for p, v in claims.items() if not isinstance(v, str))
    assert [w for w, _ in found] == [
        ("roles", "anyone", 0, "claims", path),
        ("roles", "blocked", 0, "claims", path),
    ]
    assert "quote it" in found[0][1]
    # an entry naming no issuer may mean another issuer's numeric claim: not checked
    fine = policy(anyone=[{"issuer": issuer, "claims": {"email_verified": True}}])
    fine["roles"]["numeric"] = [{"claims": {"repository_id": 1}}]
    assert [m for _, m in validate_policy(Policy.model_validate(fine)) if "is a string" in m] == []


def test_deny_roles_are_not_checked() -> None:
    data = policy()
    data["roles"]["everyone"] = [{"authenticated": True}]
    data["routes"][0]["deny"] = ["everyone"]
    assert findings(data) == []


def test_groups_mapped_onto_a_pin_claim_pin() -> None:
    data = policy(owners=[{"issuer": "github", "groups": ["octo-org"]}])
    assert findings(data) == []  # github-actions reads no groups: the entry never holds
    data["issuers"]["github"]["claims"] = {"groups": "workflow"}
    assert findings(data) != []  # now it does, and a workflow's name says nothing
    data["issuers"]["github"]["claims"] = {"groups": "repository_owner"}
    assert findings(data) == []


def test_an_entry_on_groups_or_scopes_never_holds_for_workload_tokens() -> None:
    # beside an Okta issuer, the usual roles need no issuer: workload tokens have no groups
    data = policy(support=[{"groups": ["support"]}], agents=[{"scopes": ["orders.read"]}])
    data["issuers"]["okta"] = {"issuer": "https://idp.example/oauth2/default", "audience": "api"}
    assert findings(data) == []


def test_a_shadow_policy_reads_the_token_with_its_own_preset() -> None:
    elsewhere = "http://127.0.0.1:9/google"  # Google's own issuer takes preset google only
    live_data = policy()
    live_data["issuers"]["google"]["issuer"] = elsewhere
    live = Policy.model_validate(live_data)
    candidate_data = copy.deepcopy(live_data)
    candidate_data["issuers"]["google"]["preset"] = "oidc"
    candidate = Policy.model_validate(candidate_data)
    claims = {
        "iss": elsewhere,
        "aud": GATEWAY,
        "sub": "1085",
        "email": "deployer@shop.iam.gserviceaccount.com",
        "email_verified": True,
    }
    principal = principal_for_issuer("google", live.issuers["google"], claims)
    assert principal.subject == "deployer@shop.iam.gserviceaccount.com"
    shadow = shadow_principal(principal, live, candidate)
    assert not isinstance(shadow, str) and shadow.subject == "1085"  # oidc: the sub
    # and the other way: a candidate under google refuses an unverified email
    unverified = principal_for_issuer(
        "google", candidate.issuers["google"], {**claims, "email_verified": False}
    )
    assert shadow_principal(unverified, candidate, live) == "email-unverified"


@pytest.mark.parametrize(
    ("name", "copied", "change"),
    [
        ("google2", "google", {"audience": "https://other.example"}),
        ("cluster2", "cluster", {"preset": "oidc"}),  # an oidc twin: no kubernetes rules
    ],
)
def test_two_issuers_for_one_iss_are_a_load_error(
    name: str, copied: str, change: dict[str, Any]
) -> None:
    # Verification would pick one, explain and policy tests the other: one iss, one issuer.
    data = policy()
    data["issuers"][name] = {**data["issuers"][copied], **change}
    problems = [(w, m) for w, m in validate_policy(Policy.model_validate(data)) if "already" in m]
    assert [w for w, _ in problems] == [("issuers", name, "issuer")]
    assert f"issuer '{copied}' already takes the tokens whose iss is" in problems[0][1]
    with pytest.raises(PolicyError, match="already takes the tokens"):
        load_policy_data(data, base_dir=REPO)


def _unsigned(claims: dict[str, Any]) -> str:
    """A JWT for explain, which never checks the signature."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
EXP = int(NOW.timestamp()) + 600


def test_explain_and_policy_tests_take_workload_tokens_as_the_gateway_does() -> None:
    model = Policy.model_validate(policy())
    google = {
        "iss": "accounts.google.com",  # Google's scheme-less form, which the gateway accepts
        "aud": GATEWAY,
        "sub": "1085",
        "email": "deployer@shop.iam.gserviceaccount.com",
        "email_verified": True,
        "exp": EXP,
    }
    claims, notes = unverified_claims(model, _unsigned(google), now=NOW)
    assert notes == [UNVERIFIED]
    assert principal_for(model, claims).subject == "deployer@shop.iam.gserviceaccount.com"
    # a pod's default token: the gateway says api-server-token, and so does explain
    default = {**SA, "iss": CLUSTER, "aud": [CLUSTER], "exp": EXP}
    _, notes = unverified_claims(model, _unsigned(default), now=NOW)
    assert [n.rsplit(" ", 1)[1] for n in notes[1:]] == ["api-server-token"]
    both = {**default, "aud": [GATEWAY, "https://kubernetes.default.svc"]}
    _, notes = unverified_claims(model, _unsigned(both), now=NOW)
    assert [n.rsplit(" ", 1)[1] for n in notes[1:]] == ["api-server-token"]
    # a legacy Secret-based token
    legacy = {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:payments:api"}
    with pytest.raises(SimulationError, match=r"legacy service-account token.*api-server-token"):
        unverified_claims(model, _unsigned(legacy), now=NOW)
    with pytest.raises(SimulationError, match="api-server-token"):
        principal_for(model, legacy)
