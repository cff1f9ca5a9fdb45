from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.load import LoadedPolicy, interpolate, load_policy
from gateway.policy.schema import policy_json_schema
from gateway.policy.shape import pattern_words

EXAMPLE = Path(__file__).parent / "data" / "policy.example.yaml"
ENV = {"OKTA_CLIENT_ID": "client-id", "OKTA_CLIENT_SECRET": "client-secret"}

MINIMAL = """\
version: 1
spanner: {project: p, instance: i, database: d}
issuers:
  okta: {issuer: "https://idp.example", audience: api}
identities:
  reader: {database_role: reader}
roles:
  staff: [{groups: [staff]}]
queries:
  get_thing:
    identity: reader
    sql: SELECT * FROM Things WHERE Id = @id
    params:
      id: {type: STRING}
routes:
  - {path: "/things/{id}", method: GET, query: get_thing, allow: [staff]}
"""


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of ``needle`` in ``text``."""
    starts = [m.start() for m in re.finditer(re.escape(needle), text)]
    assert len(starts) > nth, f"{needle!r} occurs {len(starts)} times"
    offset = starts[nth]
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def write(folder: Path, text: str, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def edited(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    """The example with one exact edit, written to tmp_path."""
    text = EXAMPLE.read_text()
    assert text.count(old) == 1, f"{old!r} is not unique in the example"
    text = text.replace(old, new)
    return write(tmp_path, text), text


def problems(path: Path, env: dict[str, str] | None = None) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env=ENV if env is None else env)
    assert caught.value.problems, "a PolicyError must carry its problems"
    return caught.value.problems


def only(found: list[PolicyProblem]) -> PolicyProblem:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def located(problem: PolicyProblem) -> tuple[int | None, int | None]:
    return problem.line, problem.column


# --- the example ---------------------------------------------------------------------------------


def test_the_format_example_loads() -> None:
    loaded = load_policy(EXAMPLE, env=ENV)
    policy = loaded.policy
    assert policy.version == 1
    assert set(policy.queries) == {"get_order", "create_order"}
    assert [r.path for r in policy.routes] == ["/v1/orders/{order_id}", "/v1/orders"]
    introspection = policy.issuers["okta"].introspection
    assert introspection is not None
    assert (introspection.client_id, introspection.client_secret) == ("client-id", "client-secret")
    assert policy.queries["get_order"].params["tenant"].claim == "tenant"
    assert loaded.files == (EXAMPLE,)
    assert loaded.base_dir == EXAMPLE.parent.absolute()
    assert re.fullmatch(r"[0-9a-f]{64}", loaded.sha256)


def test_locate_names_file_line_and_column() -> None:
    loaded = load_policy(EXAMPLE, env=ENV)
    text = EXAMPLE.read_text()
    file = str(EXAMPLE)
    assert loaded.locate(("routes", 0, "allow", 1)) == (file, *at(text, "order-agent]"))
    assert loaded.locate(("routes", 1)) == (file, *at(text, "path: /v1/orders\n"))
    # A block collection is located at its key.
    assert loaded.locate(("queries", "get_order", "params")) == (file, *at(text, "params:"))
    # No such node: the nearest located ancestor.
    assert loaded.locate(("routes", 1, "nope", 3)) == loaded.locate(("routes", 1))
    assert loaded.locate(())[0] == file


def test_the_hash_changes_with_any_edit_and_only_with_the_bytes(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    first = load_policy(write(tmp_path, text), env=ENV)
    same = load_policy(write(tmp_path, text), env={**ENV, "OKTA_CLIENT_ID": "other"})
    assert same.sha256 == first.sha256
    comment_edit = load_policy(
        write(tmp_path, text.replace("# the whitelist", "# whitelist")), env=ENV
    )
    assert comment_edit.sha256 != first.sha256


# --- one problem of each kind, located ---------------------------------------------------------


def test_a_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    path, text = edited(
        tmp_path, "    allow: [support, order-agent]", "    alow: [support, order-agent]"
    )
    problem = only(problems(path))  # and no "missing required key 'allow'" besides
    assert problem.file == str(path)
    assert located(problem) == at(text, "alow")
    assert problem.where == "routes[0].alow"
    assert problem.message == "unknown key 'alow'; did you mean 'allow'?"


def test_an_unknown_key_without_a_close_match_lists_the_keys(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "    timeout: 2s\n", "    timeout: 2s\n    colour: blue\n")
    problem = only(problems(path))
    assert located(problem) == at(text, "colour")
    assert problem.message.startswith("unknown key 'colour'; expected one of identity, sql, params")


def test_an_unknown_role(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "[support, order-agent]", "[support, order-agnt]")
    problem = only(problems(path))
    assert located(problem) == at(text, "order-agnt")
    assert problem.where == "routes[0].allow[1]"
    assert problem.message == "unknown role 'order-agnt'; did you mean 'order-agent'?"


def test_an_unknown_identity(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "identity: shop_writer", "identity: shop_writr")
    problem = only(problems(path))
    assert located(problem) == at(text, "shop_writr")
    assert problem.where == "queries.create_order.identity"
    assert problem.message == "unknown identity 'shop_writr'; did you mean 'shop_writer'?"


def test_a_duplicate_route(tmp_path: Path) -> None:
    extra = (
        "  - path: /v1/orders/{order_id}\n    method: get\n    query: get_order\n"
        "    tool: false\n    allow: [anyone]\n"
    )
    path, text = edited(tmp_path, "\naudit:", "\n" + extra + "\naudit:")
    problem = only(problems(path))
    assert located(problem) == at(text, "/v1/orders/{order_id}", nth=1)
    assert problem.where == "routes[2].path"
    assert problem.message == (
        "duplicate route: GET /v1/orders/{order_id} has the same method and path shape as "
        "routes[0] (GET /v1/orders/{order_id})"
    )


def test_two_routes_with_one_mcp_tool_name(tmp_path: Path) -> None:
    extra = "  - path: /v2/orders/{order_id}\n    method: get\n    query: get_order\n    allow: [anyone]\n"
    path, text = edited(tmp_path, "\naudit:", "\n" + extra + "\naudit:")
    problem = only(problems(path))
    assert located(problem) == at(text, "get_order\n    allow: [anyone]")
    assert problem.where == "routes[2].query"
    assert problem.message.startswith("duplicate MCP tool name 'get_order': routes[0] has it too")
    named = extra.replace("query: get_order\n", "query: get_order\n    tool: create_order\n")
    path, text = edited(tmp_path, "\naudit:", "\n" + named + "\naudit:")
    problem = only(problems(path))
    assert located(problem) == at(text, "create_order\n    allow: [anyone]")
    assert problem.where == "routes[2].tool"
    assert "duplicate MCP tool name 'create_order': routes[1]" in problem.message
    # another name, or off MCP: the policy loads
    for tool in ("get_order_v2", "false"):
        ok = extra.replace("query: get_order\n", f"query: get_order\n    tool: {tool}\n")
        path, _ = edited(tmp_path, "\naudit:", "\n" + ok + "\naudit:")
        load_policy(path, env=ENV)


def test_an_mcp_tool_name_follows_mcp_rules(tmp_path: Path) -> None:
    path, _ = edited(
        tmp_path, "    query: create_order\n", "    query: create_order\n    tool: new order\n"
    )
    problem = only(problems(path))
    assert problem.where == "routes[1].tool"


@pytest.mark.parametrize(
    ("old", "new", "where", "said"),
    [
        ("    query: create_order\n", "    query: create_order\n    tool: new order\n",
         "routes[1].tool", "'new order': a tool name is 1 to 128 letters, digits, _ . and -"),
        ("tenant:      {type: STRING, from: claim.tenant}",
         "tenant:      {type: STRING, from: token.tenant}", "queries.create_order.params.tenant.from",
         "'token.tenant': expected claim.NAME (a dotted path allowed), cursor.COLUMN or page_size"),
        ("{type: file, path: audit.jsonl}", "{type: file, path: audit.jsonl, rotate_size: 64 megabytes}",
         "audit.sinks[0].rotate_size",
         "'64 megabytes': expected a size such as 64MiB, 500KB or a number of bytes"),
        ("shop-writer@demo-project.iam.gserviceaccount.com", "shop-writer@demo-project",
         "identities.shop_writer.service_account",
         "'shop-writer@demo-project': a service account is the email of a Google Cloud service "
         "account, NAME@PROJECT.iam.gserviceaccount.com, such as "
         "orders-reader@my-project.iam.gserviceaccount.com"),
        ("database_role: shop_writer", "database_role: shop-writer",
         "identities.shop_writer.database_role",
         "'shop-writer': a database role (a Spanner fine-grained access control role) starts "
         "with a letter or _ and holds letters, digits and _, such as shop_reader"),
        ("{type: file, path: audit.jsonl}", "{type: spanner, identity: shop_writer, table: audit-log}",
         "audit.sinks[0].table",
         "'audit-log': a table name starts with a letter and holds at most 128 letters, digits "
         "and _, such as SpangateAudit"),
        ("    max_rows: 1   ",
         "    pagination: {keyset: [Order-Id], page_size: {default: 1, max: 1}}\n    max_rows: 1   ",
         "queries.get_order.pagination.keyset[0]",
         "'Order-Id': a keyset column is the name of a column the statement returns: a letter or "
         "_, then letters, digits and _, such as OrderId"),
        ("      order_id: {type: STRING, max_length: 36}", "      order-id: {type: STRING, max_length: 36}",
         "queries.get_order.params.order-id",
         "invalid name 'order-id': a parameter name starts with a letter or _ and holds letters, "
         "digits and _, such as order_id"),
    ],
    ids=["tool", "from", "rotate_size", "service_account", "database_role", "table", "keyset",
         "param-name"],
)  # fmt: skip
def test_a_value_of_the_wrong_form_says_the_form_not_a_regex(
    tmp_path: Path, old: str, new: str, where: str, said: str
) -> None:
    path, _ = edited(tmp_path, old, new)
    found = problems(path)
    problem = next((p for p in found if p.where == where), None)
    assert problem is not None, "\n".join(map(str, found))
    assert problem.message == said
    assert not any(bit in problem.message for bit in REGEX), problem.message


REGEX = ("^[", "\\w", "\\s", "\\.", "]*", "]+", "{0,", "$", "(?:")  # bits of a regex


def _patterns(node: object, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    """(the nearest property name, pattern) of every pattern in a JSON Schema."""
    if isinstance(node, list):
        for item in node:
            yield from _patterns(item, key)
    elif isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield key, node["pattern"]
        for name, child in node.items():
            if name == "properties" and isinstance(child, dict):
                for prop, schema in child.items():
                    yield from _patterns(schema, prop)
            elif name == "patternProperties" and isinstance(child, dict):  # a mapping's keys
                for pattern, schema in child.items():
                    yield key, pattern
                    yield from _patterns(schema, key)
            elif name == "$defs" and isinstance(child, dict):
                yield from _patterns(list(child.values()))
            elif name != "pattern":
                yield from _patterns(child, key)


def test_every_pattern_of_the_policy_has_words_not_a_regex() -> None:
    """A value that does not match a pattern of the model is told what it must be, in words
    with an example, never the JSON Schema's regular expression (shape.pattern_words)."""
    found = sorted(set(_patterns(policy_json_schema())), key=str)
    assert len(found) >= 12, found  # the walk reaches the model's patterns
    for key, pattern in found:
        words = pattern_words(key, pattern)
        assert words, f"no words for {key}: {pattern}"
        assert not any(bit in words for bit in REGEX), (key, words)


def test_sql_params_and_declared_params_must_match(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "OrderId = @order_id", "OrderId = @orderid")
    found = problems(path)
    assert [(located(p), p.where, p.message) for p in found] == [
        (
            at(text, "|"),  # the block scalar's indicator, on the line of sql:
            "queries.get_order.sql",
            "@orderid is used in the SQL but not declared; did you mean 'order_id'?",
        ),
        (
            at(text, "{type: STRING, max_length: 36}"),
            "queries.get_order.params.order_id",
            "param order_id is declared but not used in the SQL",
        ),
    ]


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("OrderId = @`order--id`", "'@`order--id`' holds the comment marker '--'"),
        ("OrderId = @order_id*/", "'*' touches the comment marker '*/'"),
    ],
)
def test_a_comment_marker_in_a_token_is_refused_naming_the_query(
    tmp_path: Path, new: str, message: str
) -> None:
    path, text = edited(tmp_path, "OrderId = @order_id", new)
    found = [p for p in problems(path) if p.where == "queries.get_order.sql"]
    assert len(found) == 1, found
    assert located(found[0]) == at(text, "|")
    assert found[0].message.startswith(message)
    assert "(SQL line 2, column" in found[0].message


def test_a_missing_environment_variable(tmp_path: Path) -> None:
    found = problems(EXAMPLE, env={"OKTA_CLIENT_SECRET": "s"})
    problem = only(found)
    assert located(problem) == at(EXAMPLE.read_text(), "${OKTA_CLIENT_ID}")
    assert problem.where == "issuers.okta.introspection.client_id"
    assert problem.message == "environment variable OKTA_CLIENT_ID is not set"


def test_a_duplicate_yaml_key_names_the_first(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "    timeout: 2s\n", "    timeout: 2s\n    timeout: 3s\n")
    problem = only(problems(path))
    assert located(problem) == at(text, "timeout: 3s")
    assert (
        problem.message
        == f"duplicate key 'timeout' (first defined at line {at(text, 'timeout: 2s')[0]})"
    )


def test_a_yaml_syntax_error_has_its_line_and_column(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "    allow: [support]\n", "    allow: [support\n")
    problem = only(problems(path))
    assert problem.file == str(path)
    assert problem.line is not None and problem.line > at(text, "allow: [support\n")[0]
    assert problem.column is not None
    assert problem.message.startswith("invalid YAML: ")


def test_a_yaml_syntax_error_at_an_exact_place(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nspanner:\n  project: 'p\n  instance: i\n")
    problem = only(problems(path))
    assert problem.line is not None and problem.message.startswith("invalid YAML:")
    bad = write(tmp_path, "version: 1\nroutes:\n  - a: 1\n   b: 2\n", "bad.yaml")
    problem = only(problems(bad))
    assert located(problem) == (4, 4)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nspanner:\n  project: p\n   instance: i\n", 4),  # one space too many
        ("version: 1\nroutes:\n  - a: 1\n b: 2\n", 4),  # one too few
        ("version: 1\nspanner:\n\tproject: p\n", 3),  # a tab
    ],
)
def test_a_misindented_line_is_named_as_such(tmp_path: Path, text: str, line: int) -> None:
    problem = only(problems(write(tmp_path, text)))
    assert problem.line == line, problem
    assert "is this line indented differently from the keys beside it?" in problem.message
    assert "spaces, never tabs" in problem.message


def test_a_get_route_to_dml(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "    method: POST", "    method: GET")
    problem = only(problems(path))
    assert located(problem) == at(text, "GET", nth=1)
    assert problem.where == "routes[1].method"
    assert "GET route cannot run DML (query create_order)" in problem.message


def test_a_query_that_is_never_routed(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "    query: create_order", "    query: get_order\n    tool: false")
    problem = only(problems(path))
    assert located(problem) == at(text, "create_order:")
    assert problem.where == "queries.create_order"
    assert problem.message == "query create_order is never routed: no route names it"


def test_a_bad_type_name(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "{type: STRING, max_length: 36}", "{type: STRNG, max_length: 36}")
    problem = only(problems(path))
    assert located(problem) == at(text, "STRNG")
    assert problem.where == "queries.get_order.params.order_id.type"
    assert problem.message.startswith("unknown type 'STRNG'; expected one of BOOL, BYTES, DATE")


def test_a_literal_lists_the_allowed_values(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "    method: POST", "    method: FETCH")
    problem = only(problems(path))
    assert located(problem) == at(text, "FETCH")
    assert problem.message == (
        "unexpected value 'FETCH'; expected 'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'"
    )


def test_a_union_says_what_it_accepts(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "audience: api://shop", "audience: 5")
    problem = only(problems(path))
    assert located(problem) == at(text, "5 ")
    assert problem.message == "expected a string or a list, got 5"


def test_a_discriminated_union_names_its_tags(tmp_path: Path) -> None:
    path, text = edited(
        tmp_path, "{type: file, path: audit.jsonl}", "{type: kafka, path: audit.jsonl}"
    )
    problem = only(problems(path))
    assert located(problem) == at(text, "kafka")
    assert problem.where == "audit.sinks[0].type"
    # the audit section may grow more sink types; the first two are the format's own
    assert problem.message.startswith("unknown type 'kafka'; expected one of 'file', 'stdout'")


def test_unknown_keys_inside_unions_are_found(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "staleness: 10s", "staleness: {maxx: 10s}")
    problem = only(problems(path))
    assert located(problem) == at(text, "maxx")
    assert (problem.where, problem.message) == (
        "queries.get_order.staleness.maxx",
        "unknown key 'maxx'; did you mean 'max'?",
    )
    path, text = edited(
        tmp_path, "{type: file, path: audit.jsonl}", "{type: file, pth: audit.jsonl}"
    )
    problem = only(problems(path))
    assert located(problem) == at(text, "pth")
    assert problem.message == "unknown key 'pth'; did you mean 'path'?"


def test_a_union_of_scalars_and_lists(tmp_path: Path) -> None:
    path, text = edited(tmp_path, "claims: {agent: true}", "claims: {agent: [1, {x: 1}]}")
    problem = only(problems(path))
    assert located(problem) == at(text, "{x: 1}")
    assert problem.where == "roles.order-agent[0].claims.agent[1]"
    assert problem.message == "expected a string, an integer, a number or true/false, got a mapping"


def test_booleans_are_spelt_as_in_yaml(tmp_path: Path) -> None:
    path, _ = edited(tmp_path, "- authenticated: true", "- authenticated: false")
    assert only(problems(path)).message == "unexpected value false; expected true"


def test_python_field_names_are_not_keys(tmp_path: Path) -> None:
    path, _ = edited(
        tmp_path,
        "tenant:   {type: STRING, from: claim.tenant}",
        "tenant:   {type: STRING, from_: claim.tenant}",
    )
    assert "unknown key 'from_'; did you mean 'from'?" in [p.message for p in problems(path)]


def test_a_boolean_is_not_a_number(tmp_path: Path) -> None:
    path, _ = edited(tmp_path, "{type: INT64, min: 0}", "{type: INT64, min: false}")
    problem = only(problems(path))
    assert problem.where == "queries.create_order.params.total_cents.min"


def test_an_unquoted_date_stays_text_for_a_date_param(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "id: {type: STRING}", "id: {type: DATE, min: 2024-01-01, max: 2024-12-31}"
    )
    loaded = load_policy(write(tmp_path, text), env={})
    assert loaded.policy.queries["get_thing"].params["id"].min == "2024-01-01"


# --- every problem at once, sorted ---------------------------------------------------------------


def test_several_errors_are_reported_together_in_order(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for old, new in [
        ("identity: shop_reader", "identity: shop_raeder"),
        ("OrderId = @order_id", "OrderId = @orderid"),
        ("    deny: [blocked]", "    dny: [blocked]"),
        ("  redact: [total_cents]", "  redact: [total_cent]"),
        ("preset: okta", "preset: octa"),
    ]:
        text = text.replace(old, new)
    path = write(tmp_path, text)
    found = problems(path, env={})
    messages = [p.message for p in found]
    assert messages == [
        "unexpected value 'octa'; expected 'okta', 'oidc', 'kubernetes', 'google' or "
        "'github-actions'; did you mean 'okta'?",
        "environment variable OKTA_CLIENT_ID is not set",
        "environment variable OKTA_CLIENT_SECRET is not set",
        "unknown identity 'shop_raeder'; did you mean 'shop_reader'?",
        "@orderid is used in the SQL but not declared; did you mean 'order_id'?",
        "param order_id is declared but not used in the SQL",
        "unknown key 'dny'; did you mean 'deny'?",
        "redact names 'total_cent', which is no parameter of any query; did you mean 'total_cents'?",
    ]
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)


def test_shape_errors_do_not_hide_reference_errors(tmp_path: Path) -> None:
    text = MINIMAL.replace("allow: [staff]", "allow: [stuff]").replace(
        "identity: reader", "identity: reader\n    max_rows: 0"
    )
    messages = [p.message for p in problems(write(tmp_path, text), env={})]
    assert messages == [
        "should be greater than or equal to 1, got 0",
        "unknown role 'stuff'; did you mean 'staff'?",
    ]


def test_a_broken_entry_is_not_reported_again_as_unknown(tmp_path: Path) -> None:
    text = MINIMAL.replace("  reader: {database_role: reader}", "  reader: {database_rol: reader}")
    problem = only(problems(write(tmp_path, text), env={}))
    assert problem.message == "unknown key 'database_rol'; did you mean 'database_role'?"


# --- environment interpolation -------------------------------------------------------------------


def test_defaults_and_literal_dollars(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        '{issuer: "https://idp.example", audience: api}',
        '{issuer: "${ISSUER:-https://fallback.example}", audience: "$${AUD}", '
        'description: "${EMPTY:-dflt} ${SET}"}',
    )
    path = write(tmp_path, text)
    issuer = load_policy(path, env={"EMPTY": "", "SET": "yes"}).policy.issuers["okta"]
    assert (issuer.issuer, issuer.audience, issuer.description) == (
        "https://fallback.example",
        "${AUD}",
        "dflt yes",
    )
    issuer = load_policy(path, env={"ISSUER": "https://set.example", "SET": ""}).policy.issuers[
        "okta"
    ]
    assert (issuer.issuer, issuer.description) == ("https://set.example", "dflt ")


def test_interpolated_values_stay_strings(tmp_path: Path) -> None:
    text = MINIMAL.replace("database: d}", "database: '${DB}'}").replace(
        "audience: api}", "audience: '${AUD}'}"
    )
    loaded = load_policy(write(tmp_path, text), env={"DB": "123", "AUD": "[a, b]"})
    assert loaded.policy.spanner.database == "123"
    assert loaded.policy.issuers["okta"].audience == "[a, b]"


@pytest.mark.parametrize(
    ("text", "env", "result", "errors"),
    [
        ("${A}", {"A": "x"}, "x", []),
        ("a${A}b${B}c", {"A": "1", "B": "2"}, "a1b2c", []),
        ("${A:-d}", {}, "d", []),
        ("${A:-}", {}, "", []),
        ("${A:-d}", {"A": ""}, "d", []),
        ("${A}", {"A": ""}, "", []),
        ("$${A}", {"A": "x"}, "${A}", []),
        ("$A and $ and $$", {"A": "x"}, "$A and $ and $$", []),
        ("${A}", {}, "${A}", ["environment variable A is not set"]),
        ("${A", {}, "${A", ["unterminated ${ (write $${ for a literal ${)"]),
        ("${1A}", {}, "${1A}", ["invalid reference ${1A}: expected ${NAME} or ${NAME:-default}"]),
    ],
)
def test_interpolate(text: str, env: dict[str, str], result: str, errors: list[str]) -> None:
    assert interpolate(text, env) == (result, errors)


def test_interpolate_with_placeholders_keeps_unset_references() -> None:
    unset: list[str] = []
    assert interpolate("a${A}b${B}c${C:-d}", {"B": "2"}, unset=unset) == ("a${A}b2cd", [])
    assert unset == ["A"]
    assert interpolate("${A", {}, unset=[]) == (
        "${A",
        ["unterminated ${ (write $${ for a literal ${)"],
    )


def test_placeholders_stand_in_for_unset_variables_with_a_located_warning() -> None:
    with pytest.raises(PolicyError):
        load_policy(EXAMPLE, env={})  # the server's way: an unset variable is a problem
    loaded = load_policy(EXAMPLE, env={"OKTA_CLIENT_ID": "id"}, placeholders=True)
    introspection = loaded.policy.issuers["okta"].introspection
    assert introspection is not None
    assert (introspection.client_id, introspection.client_secret) == ("id", "${OKTA_CLIENT_SECRET}")
    [warning] = [w for w in loaded.warnings if "environment variable" in w.message]
    assert (warning.line, warning.column) == at(EXAMPLE.read_text(), "${OKTA_CLIENT_SECRET}")
    assert warning.where == "issuers.okta.introspection.client_secret"
    assert warning.message.startswith(
        "environment variable OKTA_CLIENT_SECRET is not set: the text ${OKTA_CLIENT_SECRET} "
        "stands in for its value"
    )
    # Set variables are used as ever, and the hash is the files' either way.
    again = load_policy(EXAMPLE, env=ENV, placeholders=True).warnings
    assert not [w for w in again if "environment variable" in w.message]
    assert loaded.sha256 == load_policy(EXAMPLE, env=ENV).sha256


# --- folders -------------------------------------------------------------------------------------


def _split_example(folder: Path) -> tuple[Path, Path]:
    text = EXAMPLE.read_text()
    head, routes = text.split("\nroutes:", 1)
    routes_text, audit = routes.split("\naudit:", 1)
    first = write(folder, head + "\naudit:" + audit, "10-base.yaml")
    second = write(folder, "version: 1\nroutes:" + routes_text, "20-routes.yml")
    return first, second


def test_a_folder_merges_its_files(tmp_path: Path) -> None:
    first, second = _split_example(tmp_path)
    write(tmp_path, "policy: .\ncases: []\n", "cases.yaml")  # a policy test file: skipped
    write(tmp_path, "not: [yaml", "notes.txt")  # not a policy file
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "broken: [", "ignored.yaml")  # not recursive
    loaded = load_policy(tmp_path, env=ENV)
    assert loaded.files == (first, second)
    assert loaded.base_dir == tmp_path.absolute()
    assert len(loaded.policy.routes) == 2
    assert loaded.locate(("routes", 1, "query")) == (
        str(second),
        *at(second.read_text(), "create_order"),
    )
    assert loaded.sha256 != load_policy(EXAMPLE, env=ENV).sha256


def test_a_folder_skips_dotfiles(tmp_path: Path) -> None:
    """macOS leaves ``._policy.yaml`` (AppleDouble metadata, not YAML) beside a copied file, and
    editors leave hidden temporary files: a folder's dotfiles are not policy files, and a policy
    fingerprint (the watcher's poll) does not read them either."""
    from gateway.policy.source import fingerprint

    first, second = _split_example(tmp_path)
    (tmp_path / "._10-base.yaml").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    write(tmp_path, "routes: [\n", ".20-second.yaml.yaml")
    loaded = load_policy(tmp_path, env=ENV)
    assert loaded.files == (first, second)
    before = fingerprint(tmp_path)
    (tmp_path / "._10-base.yaml").write_bytes(b"changed")
    assert fingerprint(tmp_path) == before
    second.write_text(second.read_text() + "\n")
    assert fingerprint(tmp_path) != before


def test_routes_of_several_files_concatenate(tmp_path: Path) -> None:
    _split_example(tmp_path)
    more = (
        "routes:\n"
        "  - {path: '/v1/orders/{order_id}', method: DELETE, query: get_order, tool: false,"
        " allow: [support]}\n"
    )
    third = write(tmp_path, more, "30-more.yaml")
    loaded = load_policy(tmp_path, env=ENV)
    assert [r.method for r in loaded.policy.routes] == ["GET", "POST", "DELETE"]
    assert loaded.locate(("routes", 2, "method"))[0] == str(third)


def test_a_name_defined_in_two_files_names_both(tmp_path: Path) -> None:
    first, _ = _split_example(tmp_path)
    extra = "version: 1\nqueries:\n  get_order:\n    identity: shop_reader\n    sql: SELECT 1\n"
    third = write(tmp_path, extra, "30-extra.yaml")
    problem = only(problems(tmp_path))
    line, column = at(first.read_text(), "get_order:")
    assert (problem.file, problem.line, problem.column) == (str(third), 3, 3)
    assert problem.message == (
        f"query 'get_order' is defined twice: at {first}:{line}:{column} and {third}:3:3"
    )


def test_an_empty_section_in_one_file_merges_with_another(tmp_path: Path) -> None:
    _split_example(tmp_path)
    write(tmp_path, "version: 1\nroutes:\nroles:\n", "00-empty.yaml")
    loaded = load_policy(tmp_path, env=ENV)
    assert len(loaded.policy.routes) == 2
    assert "support" in loaded.policy.roles


def test_spanner_and_audit_belong_to_one_file(tmp_path: Path) -> None:
    first, _ = _split_example(tmp_path)
    third = write(tmp_path, "spanner: {project: a, instance: b, database: c}\n", "30-extra.yaml")
    problem = only(problems(tmp_path))
    assert (problem.file, problem.line, problem.column) == (str(third), 1, 1)
    line = at(first.read_text(), "spanner:")[0]
    assert problem.message == f"'spanner' is defined twice: at {first}:{line}:1 and {third}:1:1"


def test_versions_must_agree(tmp_path: Path) -> None:
    _, second = _split_example(tmp_path)
    second.write_text(second.read_text().replace("version: 1", "version: 2"))
    problem = only(problems(tmp_path))
    assert (problem.file, problem.line, problem.column) == (str(second), 1, 10)
    assert problem.message.startswith("version 2 differs from version 1 at ")


def test_an_empty_folder(tmp_path: Path) -> None:
    write(tmp_path, "policy: x\ncases: []\n", "only-tests.yaml")
    problem = only(problems(tmp_path))
    assert problem.message == "no policy files (*.yaml, *.yml)"


def test_a_folder_stops_at_a_file_that_does_not_parse(tmp_path: Path) -> None:
    _split_example(tmp_path)
    bad = write(tmp_path, "routes: [\n", "30-bad.yaml")
    problem = only(problems(tmp_path))
    assert problem.file == str(bad)


# --- files that are not policies -----------------------------------------------------------------


def test_no_such_file(tmp_path: Path) -> None:
    problem = only(problems(tmp_path / "missing.yaml"))
    assert problem.message == "no such file or folder"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("- a\n- b\n", "a list"),
        ("just text\n", "a scalar"),
        ("", "nothing"),
        ("# only\n", "nothing"),
    ],
)
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    problem = only(problems(write(tmp_path, text)))
    assert problem.line == 1
    assert (
        problem.message == f"the top level must be a mapping (version:, spanner:, …), found {found}"
    )


def test_yaml_features_outside_plain_data_are_refused(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """\
        audit:
          <<: {redact: []}
          sinks: [!!binary aGk=]
          redact: !custom [id]
        """
    )
    messages = [p.message for p in problems(write(tmp_path, text), env={})]
    assert "YAML merge keys (<<) are not supported" in messages
    assert "unsupported YAML tag !!binary" in messages


def test_the_problem_renders_file_line_column_where_and_message(tmp_path: Path) -> None:
    path, _ = edited(tmp_path, "[support, order-agent]", "[support, order-agnt]")
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env=ENV)
    line, column = at(path.read_text(), "order-agnt")
    assert str(caught.value) == (
        f"{path}:{line}:{column}: routes[0].allow[1]: unknown role 'order-agnt'; "
        "did you mean 'order-agent'?"
    )


def test_loaded_policy_is_a_frozen_value() -> None:
    loaded = load_policy(EXAMPLE, env=ENV)
    assert isinstance(loaded, LoadedPolicy)
    with pytest.raises(AttributeError):
        loaded.sha256 = "x"  # type: ignore[misc]


def test_a_loaded_policy_can_be_built_by_hand_for_tests() -> None:
    policy = load_policy(EXAMPLE, env=ENV).policy
    loaded = LoadedPolicy(policy=policy, files=(), sha256="0" * 64, base_dir=Path("/srv"))
    assert loaded.locate(("routes", 0)) == ("<policy>", None, None)


@pytest.mark.parametrize(
    ("lengths", "needle", "message"),
    [
        ("token_max_length: 100000", "100000", "less than or equal to 16384"),
        ("token_min_length: 20000", "20000", "less than or equal to 16384"),
        (
            "token_min_length: 64\n      token_max_length: 32",
            "token_min_length",
            "token_min_length is larger than token_max_length",
        ),
    ],
)
def test_introspection_token_lengths_are_bounded(
    tmp_path: Path, lengths: str, needle: str, message: str
) -> None:
    line_before = "      client_secret: ${OKTA_CLIENT_SECRET}\n"
    path, text = edited(tmp_path, line_before, line_before + "      " + lengths + "\n")
    problem = only(problems(path))
    assert message in problem.message
    line, column = located(problem)
    assert line is not None and column is not None
    assert line >= at(text, "introspection:")[0]
    if needle[0].isdigit():
        assert (line, column) == at(text, needle)
