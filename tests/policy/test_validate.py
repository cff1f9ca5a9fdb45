from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.policy.model import Policy
from gateway.policy.validate import (
    Salvage,
    Where,
    did_you_mean,
    template_problems,
    template_shape,
    validate_policy,
)

BASE: dict[str, Any] = {
    "version": 1,
    "spanner": {"project": "p", "instance": "i", "database": "d"},
    "issuers": {"okta": {"issuer": "https://idp.example", "audience": "api"}},
    "identities": {"reader": {"database_role": "reader"}, "writer": {"database_role": "writer"}},
    "roles": {"staff": [{"groups": ["staff"]}], "blocked": [{"claims": {"sub": "x"}}]},
    "queries": {
        "get_thing": {
            "identity": "reader",
            "sql": "SELECT * FROM Things WHERE Tenant = @tenant AND Id = @id",
            "params": {
                "id": {"type": "STRING"},
                "tenant": {"type": "STRING", "from": "claim.tenant"},
            },
        },
        "add_thing": {
            "identity": "writer",
            "sql": "INSERT INTO Things (Id) VALUES (@id)",
            "params": {"id": {"type": "STRING"}},
        },
    },
    "routes": [
        {"path": "/things/{id}", "method": "GET", "query": "get_thing", "allow": ["staff"]},
        {"path": "/things", "method": "POST", "query": "add_thing", "allow": ["staff"]},
    ],
    "audit": {"redact": ["id"]},
}


def findings(edit: dict[str, Any] | None = None, **sections: Any) -> list[tuple[Where, str]]:
    data = copy.deepcopy(BASE)
    data.update(sections)
    if edit:
        for dotted, value in edit.items():
            *parents, last = dotted.split(".")
            node: Any = data
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
    return validate_policy(Policy.model_validate(data))


def test_the_base_policy_is_clean() -> None:
    assert findings() == []


# --- references ----------------------------------------------------------------------------------


def test_unknown_references_suggest_a_name() -> None:
    found = findings({
        "routes.0.query": "get_thng",
        "routes.0.allow": ["stuff"],
        "routes.0.deny": ["blockd", "nobody-like-this"],
        "queries.add_thing.identity": "writr",
        "roles.staff": [{"issuer": "okt"}],
        "audit": {"redact": ["idd", "tenant"]},
    })
    assert findings is not None
    assert found == [
        (("roles", "staff", 0, "issuer"), "unknown issuer 'okt'; did you mean 'okta'?"),
        (("queries", "add_thing", "identity"), "unknown identity 'writr'; did you mean 'writer'?"),
        (("routes", 0, "query"), "unknown query 'get_thng'; did you mean 'get_thing'?"),
        (("routes", 0, "allow", 0), "unknown role 'stuff'; did you mean 'staff'?"),
        (("routes", 0, "deny", 0), "unknown role 'blockd'; did you mean 'blocked'?"),
        (("routes", 0, "deny", 1), "unknown role 'nobody-like-this'"),
        (("queries", "get_thing"), "query get_thing is never routed: no route names it"),
        (("audit", "redact", 0), "redact names 'idd', which is no parameter of any query; did you "
                                 "mean 'id'?"),
    ]


def test_did_you_mean() -> None:
    assert did_you_mean("alow", ["allow", "deny"]) == "; did you mean 'allow'?"
    assert did_you_mean("zzz", ["allow", "deny"]) == ""
    assert did_you_mean("OrderId", ["order_id", "orderid"]) == "; did you mean 'orderid'?"


# --- path templates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["/", "/a", "/a/", "/v1/orders/{order_id}", "/a/{x}/b/{y_2}/", "/a:b@c/~x-y_z.json", "/a/$&'()*+,;="],
)
def test_good_templates(template: str) -> None:
    assert template_problems(template) == []


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("a/b", "a path template must start with /"),
        ("/a//b", "empty segment (//): only a trailing slash may be empty"),
        ("/a/{x}/{x}", "path parameter {x} appears twice"),
        ("/a/x{y}", "segment 'x{y}': a parameter is a whole segment"),
        ("/a/{y}z", "segment '{y}z': a parameter is a whole segment"),
        ("/a/{1x}", "segment '{1x}': a parameter is a whole segment"),
        ("/a/{x-y}", "segment '{x-y}': a parameter is a whole segment"),
        ("/a/{}", "segment '{}': a parameter is a whole segment"),
        ("/a/}", "segment '}': a parameter is a whole segment"),
        ("/a/./b", "dot segment '.' is not allowed"),
        ("/a/..", "dot segment '..' is not allowed"),
        ("/a%2Fb", "percent-encoding is not allowed"),
        ("/a b", "segment 'a b': ' ' not allowed in a path segment (RFC 3986 pchar)"),
        ("/a?x=1", "'?' not allowed"),
        ("/a#x", "'#' not allowed"),
        ("/caf\u00e9", "'\u00e9' not allowed"),
        ("/a\\b", "'\\\\' not allowed"),
        ("/healthz", "/healthz is reserved for the gateway's own endpoints"),
        ("/readyz/x", "/readyz is reserved"),
        ("/metrics", "/metrics is reserved"),
        ("/openapi.json", "/openapi.json is reserved"),
        ("/docs/{x}", "/docs is reserved"),
        ("/redoc/", "/redoc is reserved"),
    ],
)
def test_bad_templates(template: str, problem: str) -> None:
    problems = template_problems(template)
    assert len(problems) == 1
    assert problem in problems[0]


def test_reserved_means_the_segment_not_the_prefix() -> None:
    assert template_problems("/healthzone") == []
    assert template_problems("/documents") == []


def test_template_shape_ignores_parameter_names() -> None:
    assert template_shape("/a/{x}/b") == template_shape("/a/{y}/b") == ("a", "{}", "b")
    assert template_shape("/a/{x}") != template_shape("/a/{x}/")


def test_template_problems_are_reported_at_the_route_path() -> None:
    found = findings({"routes.1.path": "/things//x"})
    assert found == [(("routes", 1, "path"), "empty segment (//): only a trailing slash may be empty")]


# --- duplicate routes ----------------------------------------------------------------------------


def _route(path: str, method: str = "GET", query: str = "get_thing") -> dict[str, Any]:
    # off MCP: these routes share a query, and so would share its tool name
    return {"path": path, "method": method, "query": query, "allow": ["staff"], "tool": False}


def test_same_method_and_shape_is_a_duplicate_whatever_the_names() -> None:
    routes = [*BASE["routes"], _route("/things/{other}")]
    queries = copy.deepcopy(BASE["queries"])
    queries["get_thing"]["params"]["other"] = {"type": "STRING"}
    queries["get_thing"]["sql"] += " AND @other = @other"
    found = findings(routes=routes, queries=queries)
    assert found == [(
        ("routes", 2, "path"),
        "duplicate route: GET /things/{other} has the same method and path shape as routes[0] "
        "(GET /things/{id})",
    )]


def test_another_method_or_a_trailing_slash_is_another_route() -> None:
    routes = [*BASE["routes"], _route("/things/{id}", "DELETE"), _route("/things/{id}/")]
    assert findings(routes=routes) == []


def test_a_literal_and_a_parameter_are_different_shapes() -> None:
    assert findings(routes=[*BASE["routes"], _route("/things/special")]) == []


def test_routes_that_can_shadow_each_other_are_refused() -> None:
    routes = [
        *BASE["routes"],
        _route("/things/small/{id}"),
        _route("/things/{id}/big"),  # /things/small/big matches both; neither is more specific
        _route("/things/{id}/big", "POST", "add_thing"),  # another method: no shadow
    ]
    found = findings(routes=routes)
    assert found == [(
        ("routes", 3, "path"),
        "GET /things/{id}/big and routes[2] (GET /things/small/{id}) can shadow each other: both "
        "match /things/small/big and neither is more specific; make one a refinement of the other "
        "(a literal wherever the other has one), make them disjoint, or add a route "
        "/things/small/big",
    )]


def test_a_refinement_or_a_route_for_the_intersection_is_no_shadow() -> None:
    routes = [*BASE["routes"], _route("/things/special"), _route("/{x}/special"), _route("/{x}")]
    queries = copy.deepcopy(BASE["queries"])
    queries["get_thing"]["params"]["x"] = {"type": "STRING"}
    queries["get_thing"]["sql"] += " AND @x = @x"
    assert findings(routes=routes, queries=queries) == []


# --- path parameters -----------------------------------------------------------------------------


def test_a_path_parameter_must_be_a_param_of_the_query() -> None:
    found = findings({"routes.0.path": "/things/{idd}"})
    assert found == [(("routes", 0, "path"),
                      "path parameter {idd} is not a param of query get_thing; did you mean 'id'?")]


def test_a_claim_bound_parameter_cannot_come_from_the_path() -> None:
    found = findings({"routes.0.path": "/tenants/{tenant}/things/{id}"})
    assert found == [(
        ("routes", 0, "path"),
        "path parameter {tenant} is claim-bound in query get_thing (from: claim.tenant): "
        "a claim-bound parameter cannot come from the path",
    )]


# --- SQL -----------------------------------------------------------------------------------------


def test_a_refused_statement_is_reported_at_its_sql() -> None:
    found = findings({"queries.add_thing.sql": "DROP TABLE Things", "queries.add_thing.params": {}})
    assert found == [(("queries", "add_thing", "sql"),
                      "DDL (DROP) is refused: only a query (SELECT, WITH or '(') or DML (INSERT, "
                      "UPDATE, DELETE) can be whitelisted (SQL line 1, column 1)")]


def test_sql_params_must_match_in_both_directions() -> None:
    found = findings({"queries.add_thing.sql": "INSERT INTO Things (Id) VALUES (@Id)"})
    assert found == [
        (("queries", "add_thing", "sql"), "@Id is used in the SQL but not declared; did you mean 'id'?"),
        (("queries", "add_thing", "params", "id"), "param id is declared but not used in the SQL"),
    ]


def test_a_param_in_a_comment_does_not_count_as_used() -> None:
    found = findings({"queries.add_thing.sql": "INSERT INTO Things (Id) VALUES ('x') -- @id"})
    assert found == [(("queries", "add_thing", "params", "id"),
                      "param id is declared but not used in the SQL")]


def test_get_must_not_reach_dml_but_other_methods_may() -> None:
    found = findings({"routes.1.method": "GET"})
    assert found == [(("routes", 1, "method"),
                      "a GET route cannot run DML (query add_thing); use POST, PUT, PATCH or DELETE")]
    for method in ("PUT", "PATCH", "DELETE"):
        assert findings({"routes.1.method": method}) == []


def test_a_read_may_be_reached_by_post() -> None:
    assert findings({"routes.0.method": "POST", "routes.0.path": "/things/{id}/read"}) == []


def test_dml_takes_no_staleness() -> None:
    found = findings({"queries.add_thing.staleness": "10s"})
    assert found == [(("queries", "add_thing", "staleness"),
                      "staleness applies to reads; DML runs in a read-write transaction")]


def test_a_zero_timeout() -> None:
    assert findings({"queries.get_thing.timeout": "0s"}) == [
        (("queries", "get_thing", "timeout"), "timeout must be more than 0")
    ]


def test_every_query_must_be_routed() -> None:
    found = findings(routes=[BASE["routes"][0]])
    assert found == [(("queries", "add_thing"), "query add_thing is never routed: no route names it")]


# --- parameter constraints -----------------------------------------------------------------------


def param_findings(spec: dict[str, Any]) -> list[tuple[Where, str]]:
    """Findings about one parameter ``p`` of a POST-routed query."""
    queries = {"q": {"identity": "reader", "sql": "SELECT @p", "params": {"p": spec}}}
    routes = [{"path": "/q", "method": "POST", "query": "q", "allow": ["staff"]}]
    return findings(queries=queries, routes=routes, audit={})


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "INT64", "min": 0, "max": 10, "default": 5, "enum": [1, 5]},
        {"type": "INT64", "min": "-9223372036854775808", "max": "9223372036854775807"},
        {"type": "FLOAT64", "min": -1.5, "max": 2},
        {"type": "NUMERIC", "min": "0.01", "max": 100, "default": "1.50"},
        {"type": "DATE", "min": "2024-01-01", "max": "2024-12-31", "default": "2024-06-01"},
        {"type": "TIMESTAMP", "min": "2024-01-01T00:00:00Z", "max": "2024-01-01T00:00:00.000000001Z"},
        {"type": "STRING", "max_length": 3, "pattern": "^[a-z]+$", "enum": ["a", "bc"], "default": "a"},
        {"type": "BYTES", "max_length": 2, "default": "AAE="},
        {"type": "ARRAY<INT64>", "max_length": 3, "min": 0, "enum": [0, 1], "default": [0, 1, None]},
        {"type": "ARRAY<STRING>", "pattern": "^x", "default": []},
        {"type": "BOOL", "default": False},
        {"type": "JSON", "default": {"a": [1]}},
        {"type": "STRING", "nullable": True, "default": None},
        {"type": "STRING", "from": "claim.t", "pattern": "t-[0-9]+", "max_length": 9, "enum": ["t-1"]},
    ],
)
def test_constraints_that_fit_their_type(spec: dict[str, Any]) -> None:
    assert param_findings(spec) == []


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"type": "STRING", "min": 1}, "min",
         "min applies to INT64, FLOAT64, NUMERIC, DATE, TIMESTAMP, not STRING"),
        ({"type": "BOOL", "max": 1}, "max", "max applies to"),
        ({"type": "ARRAY<STRING>", "max": "z"}, "max", "not ARRAY<STRING>"),
        ({"type": "INT64", "min": "ten"}, "min", "min 'ten' is not a valid INT64: expected an integer"),
        ({"type": "INT64", "min": 1.5}, "min", "is not a valid INT64"),
        ({"type": "NUMERIC", "min": 0.1}, "min", "floats lose precision"),
        ({"type": "DATE", "max": "2024-02-30"}, "max", "is not a valid DATE"),
        ({"type": "TIMESTAMP", "min": "yesterday"}, "min", "is not a valid TIMESTAMP"),
        ({"type": "FLOAT64", "max": "Infinity"}, "max", "max must be a finite number"),
        ({"type": "INT64", "min": 5, "max": 1}, "max", "min 5 is greater than max 1"),
        ({"type": "DATE", "min": "2024-02-01", "max": "2024-01-01"}, "max", "is greater than max"),
        ({"type": "INT64", "max_length": 3}, "max_length",
         "max_length applies to STRING, BYTES and ARRAY, not INT64"),
        ({"type": "INT64", "pattern": "^1"}, "pattern",
         "pattern applies to STRING and ARRAY<STRING>, not INT64"),
        ({"type": "BOOL", "enum": [True]}, "enum", "enum applies to STRING and INT64"),
        ({"type": "FLOAT64", "enum": [1.5]}, "enum", "not FLOAT64"),
        ({"type": "STRING", "default": 5}, "default", "default 5 is not a valid STRING: expected a string"),
        ({"type": "INT64", "default": None}, "default", "default is null but the parameter is not nullable"),
        ({"type": "INT64", "min": 1, "default": 0}, "default", "default 0 is below min 1"),
        ({"type": "INT64", "max": 1, "default": 2}, "default", "default 2 is above max 1"),
        ({"type": "STRING", "max_length": 2, "default": "abc"}, "default",
         "default 'abc' is longer than max_length 2"),
        ({"type": "STRING", "pattern": "^a", "default": "ba"}, "default",
         "default 'ba' does not match pattern ^a"),
        ({"type": "STRING", "pattern": "^ab$", "default": "ab\n"}, "default", "does not match pattern"),
        ({"type": "STRING", "enum": ["a"], "default": "b"}, "default", "default 'b' is not one of enum"),
        ({"type": "ARRAY<INT64>", "default": 1}, "default", "expected a JSON array of INT64"),
        ({"type": "ARRAY<INT64>", "max_length": 1, "default": [1, 2]}, "default", "longer than"),
        ({"type": "ARRAY<INT64>", "min": 0, "default": [1, -1]}, "default", "is below min 0"),
        ({"type": "BYTES", "default": "not base64!"}, "default", "expected a base64 string"),
        ({"type": "STRING", "from": "claim.t", "default": "x"}, "default",
         "a claim-bound parameter takes no default"),
        ({"type": "STRING", "from": "claim.t", "nullable": True}, "nullable",
         "a claim-bound parameter cannot be nullable"),
    ],
)
def test_constraints_that_do_not_fit(spec: dict[str, Any], field: str, message: str) -> None:
    found = param_findings(spec)
    assert len(found) == 1, found
    where, text = found[0]
    assert where == ("queries", "q", "params", "p", field)
    assert message in text


@pytest.mark.parametrize(
    ("spec", "index", "message"),
    [
        ({"type": "INT64", "enum": [1, "x"]}, 1, "enum value 'x' is not a valid INT64"),
        ({"type": "INT64", "enum": [1, "1"]}, 1, "enum lists '1' twice"),
        ({"type": "STRING", "enum": ["a", "a"]}, 1, "enum lists 'a' twice"),
        ({"type": "STRING", "enum": ["ok", 7]}, 1, "enum value 7 is not a valid STRING"),
        ({"type": "STRING", "pattern": "a.*", "enum": ["ab", "b"]}, 1,
         "enum value 'b' does not match pattern a.*, so it can never be accepted"),
        ({"type": "STRING", "max_length": 1, "enum": ["a", "bb"]}, 1, "is longer than max_length"),
        ({"type": "INT64", "min": 0, "enum": [-1, 1]}, 0, "enum value -1 is below min 0"),
    ],
)
def test_enum_values(spec: dict[str, Any], index: int, message: str) -> None:
    found = param_findings(spec)
    assert len(found) == 1, found
    assert found[0][0] == ("queries", "q", "params", "p", "enum", index)
    assert message in found[0][1]


# --- a partial policy (what the loader salvages from one with shape errors) -----------------------


def test_salvage_keeps_references_to_broken_entries_quiet() -> None:
    data = copy.deepcopy(BASE)
    del data["roles"]["staff"]  # as if it had failed validation
    route = data["routes"].pop(0)  # as if routes[0] had failed validation
    del data["queries"]["add_thing"]
    data["routes"][0]["allow"] = ["staff", "nobody"]
    data["routes"][0]["query"] = "add_thing"
    salvage = Salvage(
        route_index=(1,),
        broken={"roles": frozenset({"staff"}), "queries": frozenset({"add_thing"}),
                "routes": frozenset()},
        routed=frozenset({route["query"]}),
        redactable=frozenset({"id"}),
    )
    found = validate_policy(Policy.model_validate(data), salvage=salvage)
    assert found == [(("routes", 1, "allow", 1), "unknown role 'nobody'")]


def test_salvage_of_an_unusable_section_checks_no_reference_into_it() -> None:
    data = copy.deepcopy(BASE)
    data["routes"][0]["allow"] = ["anything"]
    salvage = Salvage(route_index=(0, 1), broken={"roles": None}, routed=frozenset(),
                      redactable=None)
    data["audit"] = {"redact": ["whatever"]}
    assert validate_policy(Policy.model_validate(data), salvage=salvage) == []
