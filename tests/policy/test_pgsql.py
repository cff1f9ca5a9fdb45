"""The PostgreSQL dialect's reading of policy SQL: literals, comments, dollar quoting, ``$k``
placeholders mapped to the declared parameters, and the loader's messages about them."""

from __future__ import annotations

import copy
import decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.bind import compile_param
from gateway.policy.compiled import compile_policy, wire_names
from gateway.policy.diff import diff_policies, render_diff
from gateway.policy.explain import explain, render_explanation
from gateway.policy.load import load_policy_data
from gateway.policy.model import Param, Policy
from gateway.policy.pagination import read_order
from gateway.policy.selectlist import result_columns
from gateway.policy.simulate import principal_for, request_facts
from gateway.policy.sqlscan import SqlInfo, SqlProblem, scan_sql, statement_tokens
from gateway.policy.types import ParamType, TypeProblem, coerce, parse_type
from gateway.policy.validate import validate_policy

PG = "postgresql"


def pg(sql: str, *params: str) -> SqlInfo:
    return scan_sql(sql, PG, params)


def test_placeholders_name_the_declared_parameters_in_order() -> None:
    info = pg("SELECT * FROM orders WHERE tenant_id = $2 AND order_id = $1 OR $2 = ''", "id", "t")
    assert info == SqlInfo(params=("t", "id"), kind="query", returning=False, tables=("orders",))


def test_a_placeholder_past_the_declared_ones_is_kept_as_written() -> None:
    assert pg("SELECT $1, $3", "a").params == ("a", "$3")
    assert pg("SELECT $01", "a").params == ("a",)  # PostgreSQL reads $01 as $1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '$1'",
        "SELECT 'it''s $1'",
        "SELECT 'a\\' || 'b'",  # a backslash is an ordinary character: the string ends at \'
        "SELECT E'it\\'s $1'",
        "SELECT e'\\\\', E'$1\\''",
        "SELECT $$ $1 ' \" -- $$",
        "SELECT $tag$ $$ $1 $tag$",
        "SELECT $a_1$x$a_1$",
        'SELECT "$1" FROM t',
        'SELECT "a""$1" FROM t',
        "SELECT 1 -- $1",
        "SELECT /* $1 /* nested $1 */ still $1 */ 1",
        "SELECT B'0101', X'1F', N'$1'",
        "SELECT foo$1 FROM t",  # $ inside a name belongs to the name
    ],
)
def test_no_placeholders_in_literals_identifiers_or_comments(sql: str) -> None:
    assert pg(sql, "p").params == ()


def test_a_placeholder_right_after_literals_is_still_found() -> None:
    assert pg("SELECT 'a'||$1, $$x$$||$2, E'\\''||$1", "a", "b").params == ("a", "b")


def test_hash_is_an_operator_not_a_comment_and_the_statement_goes_on() -> None:
    assert pg("SELECT 1 # 2, $1", "a").params == ("a",)


def test_a_semicolon_inside_literals_does_not_end_the_statement() -> None:
    assert pg("SELECT ';', $$;$$, E'\\';', \";\" FROM t; -- done\n").kind == "query"


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1; SELECT 2", "SELECT $$x$$; DELETE FROM t", "SELECT /* a /* b */ ; */ 1; DROP TABLE t"],
)
def test_more_than_one_statement_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="more than one statement"):
        pg(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t (k int8 PRIMARY KEY)",
        "drop table t",
        "GRANT SELECT ON TABLE t TO r",
        "ALTER TABLE t ADD COLUMN c text",
    ],
)
def test_ddl_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match=r"DDL \(\w+\) is refused"):
        pg(sql)


@pytest.mark.parametrize("sql", ["VALUES (1)", "TABLE t", "SHOW database_dialect", "SET x = 1"])
def test_anything_but_a_query_or_dml_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem, match="does not start a query or DML"):
        pg(sql)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 'abc", "unterminated string literal (SQL line 1, column 8)"),
        ("SELECT E'abc\\'", "unterminated string literal"),
        ("SELECT $$abc$", "unterminated dollar-quoted string (no closing $$)"),
        ("SELECT $x$abc$y$", "unterminated dollar-quoted string (no closing $x$)"),
        ("SELECT /* a /* b */", "unterminated comment (SQL line 1, column 8)"),
        ('SELECT "abc', "unterminated quoted identifier"),
        ('SELECT "" FROM t', "a quoted identifier cannot be empty"),
        ("SELECT $1abc", "trailing junk after parameter $1"),
        ("SELECT $ 1", "'$' must start a parameter"),
        ("SELECT $0", "$0 is no parameter: placeholders start at $1 (the first declared) (SQL"),
        ("SELECT $00", "$00 is no parameter: placeholders start at $1"),
        ("SELECT U&'d\\0061t'", "U& strings and identifiers"),
        ("SELECT 1 -- a\r OR TRUE", "U+000D (CARRIAGE RETURN) is not allowed"),
    ],
)
def test_lexical_errors_say_what_and_where(sql: str, message: str) -> None:
    with pytest.raises(SqlProblem) as caught:
        pg(sql, "a")
    assert message in str(caught.value)


def test_a_googlesql_parameter_is_refused_naming_the_placeholder_to_write() -> None:
    with pytest.raises(SqlProblem) as caught:
        pg("SELECT * FROM t WHERE a = @tenant", "id", "tenant")
    assert "@tenant is a GoogleSQL parameter" in str(caught.value)
    assert "write $2 (tenant is declared parameter number 2)" in str(caught.value)


def test_at_before_anything_but_a_name_is_an_operator() -> None:
    assert pg("SELECT @ -5, a <@ b FROM t").kind == "query"


def test_a_postgresql_placeholder_in_a_googlesql_policy_says_which_dialect_to_set() -> None:
    with pytest.raises(SqlProblem, match=r"\$1 is a PostgreSQL-dialect placeholder.*dialect: postgresql"):
        scan_sql("SELECT * FROM t WHERE a = $1")


def test_unquoted_names_fold_to_lower_case_and_quoted_ones_keep_theirs() -> None:
    tokens = statement_tokens('SELECT OrderId, "OrderId" FROM Orders', PG)
    assert [(t.kind, t.text) for t in tokens if t.kind in ("word", "quoted")] == [
        ("word", "select"), ("word", "orderid"), ("quoted", "OrderId"), ("word", "from"),
        ("word", "orders"),
    ]  # fmt: skip


def test_returning_and_tables_of_dml() -> None:
    info = pg("UPDATE Orders SET status = $2 WHERE id = $1 RETURNING id, status", "id", "s")
    assert (info.kind, info.returning, info.tables) == ("dml", True, ("orders",))
    info = pg("INSERT INTO orders (id) VALUES ($1)", "id")
    assert (info.kind, info.returning, info.tables) == ("dml", False, ("orders",))
    assert pg("DELETE FROM orders WHERE id = $1 RETURNING *", "id").returning is True
    # GoogleSQL's THEN RETURN is not PostgreSQL's
    assert pg("DELETE FROM orders WHERE id = $1", "id").returning is False


def test_select_list_names_in_the_dialect() -> None:
    assert result_columns('SELECT order_id, o.Total, x AS "OrderId" FROM orders o', PG) == (
        "order_id", "total", "OrderId",
    )  # fmt: skip
    # PostgreSQL names an expression itself (?column?, count): not read from the text
    assert result_columns("SELECT count(*) FROM orders", PG) is None
    assert result_columns("UPDATE t SET a = $1 RETURNING a, B", PG) == ("a", "b")
    assert result_columns("UPDATE t SET a = $1", PG) == ()


def test_pagination_reads_limit_as_the_declared_parameter() -> None:
    order = read_order("SELECT * FROM t ORDER BY created_at DESC, id LIMIT $3", PG, ("a", "b", "n"))
    assert order.items == (("created_at", "DESC"), ("id", "ASC"))
    assert order.limit == "n"


def test_wire_names_are_p1_to_pn_in_declared_order() -> None:
    assert wire_names(["tenant", "id"], PG) == {"tenant": "p1", "id": "p2"}
    assert wire_names(["tenant", "id"], "googlesql") == {"tenant": "tenant", "id": "id"}


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("int8", "INT64"), ("bigint", "INT64"), ("float8", "FLOAT64"),
        ("double precision", "FLOAT64"), ("numeric", "NUMERIC"), ("varchar", "STRING"),
        ("text", "STRING"), ("character varying", "STRING"), ("bytea", "BYTES"),
        ("date", "DATE"), ("timestamptz", "TIMESTAMP"), ("timestamp with time zone", "TIMESTAMP"),
        ("jsonb", "JSON"), ("bool", "BOOL"), ("boolean", "BOOL"), ("int8[]", "ARRAY<INT64>"),
        ("text []", "ARRAY<STRING>"), ("ARRAY<jsonb>", "ARRAY<JSON>"), ("STRING", "STRING"),
    ],
)  # fmt: skip
def test_postgresql_type_names_are_the_gateways_types(text: str, canonical: str) -> None:
    assert str(parse_type(text)) == canonical


@pytest.mark.parametrize(
    "text", ["int4", "timestamp without time zone", "json[][]", "ARRAY<int8[]>", "serial"]
)
def test_other_type_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        parse_type(text)


def test_a_postgresql_numeric_takes_pg_numeric_values() -> None:
    spec = compile_param("n", Param(type="NUMERIC"), None, PG)
    big = "1" * 60 + "." + "2" * 20
    assert coerce(spec.ptype, big, from_text=False) == decimal.Decimal(big)
    assert coerce(spec.ptype, "NaN", from_text=False).is_nan()
    with pytest.raises(TypeProblem, match="at most 16383 digits after the point"):
        coerce(spec.ptype, "0." + "1" * 16384, from_text=False)
    with pytest.raises(TypeProblem, match="infinite"):
        coerce(spec.ptype, "Infinity", from_text=False)
    element = compile_param("a", Param(type="ARRAY<NUMERIC>"), None, PG).ptype
    assert coerce(element, ["NaN", None], from_text=False)[1] is None
    # GoogleSQL's NUMERIC keeps its range
    with pytest.raises(TypeProblem, match="NUMERIC out of range"):
        coerce(ParamType("NUMERIC"), big, from_text=False)


BASE: dict[str, Any] = {
    "version": 1,
    "spanner": {"project": "p", "instance": "i", "database": "d", "dialect": "postgresql"},
    "issuers": {"okta": {"issuer": "https://idp.example", "audience": "api"}},
    "identities": {"reader": {"database_role": "reader"}},
    "roles": {"staff": [{"groups": ["staff"]}]},
    "queries": {
        "get_thing": {
            "identity": "reader",
            "sql": "SELECT id, secret FROM things WHERE tenant = $1 AND id = $2",
            "params": {
                "tenant": {"type": "varchar", "from": "claim.tenant"},
                "id": {"type": "int8"},
            },
        },
    },
    "routes": [
        {"path": "/things/{id}", "method": "GET", "query": "get_thing", "allow": ["staff"]},
    ],
}


def findings(sql: str, **query: Any) -> list[tuple[Any, str]]:
    data = copy.deepcopy(BASE)
    data["queries"]["get_thing"]["sql"] = sql
    data["queries"]["get_thing"].update(query)
    return validate_policy(Policy.model_validate(data))


def test_a_postgresql_policy_that_matches_its_placeholders_loads() -> None:
    assert findings(BASE["queries"]["get_thing"]["sql"]) == []


def test_a_placeholder_past_the_declared_parameters_is_a_load_error() -> None:
    assert findings("SELECT id FROM things WHERE tenant = $1 AND id = $2 AND x = $3") == [
        (("queries", "get_thing", "sql"), (
            "$3 is used in the SQL, but the query declares 2 parameters: $1..$N stand for its "
            "params in the order they are declared; placeholders start at $1 (SQL line 1, "
            "column 61)"
        )),
    ]  # fmt: skip


def test_an_unused_declared_parameter_names_its_placeholder() -> None:
    assert findings("SELECT id FROM things WHERE tenant = $1") == [
        (("queries", "get_thing", "params", "id"), (
            "param id is declared (number 2) but $2 is not used in the SQL: a PostgreSQL-dialect "
            "statement refers to its k-th declared parameter as $k"
        )),
    ]  # fmt: skip


def test_a_googlesql_parameter_in_a_postgresql_policy_is_a_load_error() -> None:
    [(where, message)] = findings("SELECT id FROM things WHERE tenant = @tenant AND id = $2")
    assert where == ("queries", "get_thing", "sql")
    assert "@tenant is a GoogleSQL parameter" in message and "write $1" in message


def test_masks_are_checked_against_the_folded_column_names() -> None:
    found = findings(
        "SELECT Id, Secret FROM things WHERE tenant = $1 AND id = $2",
        mask={"Secret": {"with": "redact"}},
    )
    assert [w for w, _ in found] == [("queries", "get_thing", "mask", "Secret")]
    assert "its columns: id, secret" in found[0][1]
    assert findings(
        'SELECT id, secret AS "Secret" FROM things WHERE tenant = $1 AND id = $2',
        mask={"Secret": {"with": "redact"}},
    ) == []


def test_dml_without_returning_masks_nothing() -> None:
    found = findings(
        "UPDATE things SET secret = 'x' WHERE tenant = $1 AND id = $2",
        mask={"secret": {"with": "redact"}},
    )
    assert any("DML without RETURNING" in message for _, message in found)


def test_pagination_in_the_dialect() -> None:
    params = {
        "tenant": {"type": "varchar", "from": "claim.tenant"},
        "id": {"type": "int8"},
        "after": {"type": "int8", "from": "cursor.id"},
        "n": {"type": "int8", "from": "page_size"},
    }
    pagination = {"keyset": ["id"], "page_size": {"default": 10, "max": 100}}
    good = (
        "SELECT id FROM things WHERE tenant = $1 AND id > $2 AND ($3 IS NULL OR id > $3) "
        "ORDER BY id LIMIT $4"
    )
    assert findings(good, params=params, pagination=pagination) == []
    bad = good.replace("LIMIT $4", "LIMIT $2")
    assert (("queries", "get_thing", "sql"), (
        "LIMIT $2 is not the page size parameter: the statement must end with ORDER BY id "
        "(each ASC or DESC) LIMIT $4"
    )) in findings(bad, params=params, pagination=pagination)


def test_the_mutation_count_reads_a_postgresql_insert() -> None:
    from gateway.spanner.limits import insert_cells_per_row

    sql = 'INSERT INTO "Orders" (a, b) VALUES ($1, $2), ($3, $4)'
    assert insert_cells_per_row(sql) == (2, 2)


# The reviewer's repro (issue 19, H1): on Spanner, E''<newline>'\' continues the E'' string with
# backslash escapes, so `\'` is a quote inside it and `$1` sits inside the literal; a reader that
# takes the continuation for a new standard string thinks `$1` filters the rows.
_CONTINUED = (
    'SELECT account_id AS "Id", org AS "Org" FROM "Accounts" WHERE E\'\'\n'
    "'\\' AND org = $1 AND ' = ' AND ' IS NOT NULL --'"
)


@pytest.mark.parametrize(
    "sql",
    [
        _CONTINUED,
        "SELECT 'a'\n'b' AS c WHERE x = $1",
        "SELECT 'a' -- note\n  'b' AS c WHERE x = $1",
        "SELECT E'a'\n\n\t'b' AS c WHERE x = $1",
        "SELECT X'1F'\n'2' AS c WHERE x = $1",
        "SELECT 'a' /* c */\n'b' AS c WHERE x = $1",
    ],
)
def test_a_string_continued_on_a_following_line_is_refused(sql: str) -> None:
    with pytest.raises(SqlProblem) as caught:
        pg(sql, "org")
    assert "one string continued in PostgreSQL" in str(caught.value)
    assert "(SQL line " in str(caught.value)


def test_strings_on_following_lines_apart_from_each_other_still_read() -> None:
    info = pg("SELECT 'a' AS x,\n'b' AS y FROM t WHERE c = $1 || 'x'\n", "org")
    assert info.params == ("org",)


# The reviewer's repro (issue 19, H2): Spanner's PostgreSQL reader takes U+2003 for a letter, so
# `AS \u2003$1` names a table alias and `org = \u2003$1.org` compares the column with itself.
@pytest.mark.parametrize(
    "space", ["\u00a0", "\u2000", "\u2003", "\u200a", "\u202f", "\u205f", "\u3000", "\u1680"]
)
@pytest.mark.parametrize("dialect", ["postgresql", "googlesql"])
def test_a_unicode_space_outside_quoted_text_is_refused(space: str, dialect: str) -> None:
    param = "$1" if dialect == PG else "@org"
    sql = f"SELECT account_id FROM Accounts AS {space}{param} WHERE org = {space}{param}.org"  # noqa: S608
    with pytest.raises(SqlProblem) as caught:
        scan_sql(sql, dialect, ("org",))  # type: ignore[arg-type]
    assert f"U+{ord(space):04X}" in str(caught.value)
    assert "is not allowed outside quoted text" in str(caught.value)


@pytest.mark.parametrize("dialect", ["postgresql", "googlesql"])
def test_a_unicode_space_inside_a_name_is_refused(dialect: str) -> None:
    with pytest.raises(SqlProblem) as caught:
        scan_sql("SELECT org\u2003x FROM t", dialect, ())  # type: ignore[arg-type]
    assert "U+2003" in str(caught.value)


def test_a_unicode_space_in_literals_identifiers_and_comments_is_text() -> None:
    info = pg("SELECT 'a\u2003b' AS \"x\u00a0y\" -- caf\u00e9\u3000\nFROM t WHERE c = $1", "org")
    assert info.params == ("org",)


def _swapped() -> dict[str, Any]:
    """BASE with get_thing's params declared in the other order, its SQL unchanged: $1 now binds
    id and $2 the tenant claim."""
    data = copy.deepcopy(BASE)
    params = data["queries"]["get_thing"]["params"]
    data["queries"]["get_thing"]["params"] = {"id": params["id"], "tenant": params["tenant"]}
    return data


def test_diff_sees_reordered_params_as_rebound_placeholders() -> None:
    old = Policy.model_validate(BASE)
    new = Policy.model_validate(_swapped())
    diff = diff_policies(old, new)
    assert not diff.empty
    text = render_diff(diff)
    assert "~ get_thing: changed: placeholders ($k binds the k-th declared parameter)" in text
    assert "- $1 -> tenant, $2 -> id" in text
    assert "+ $1 -> id, $2 -> tenant" in text
    # another change to the same query: one entry, placeholders named among its changes
    both = _swapped()
    both["queries"]["get_thing"]["description"] = "one thing"
    text = render_diff(diff_policies(old, Policy.model_validate(both)))
    assert text.count("get_thing:") == 1
    assert "changed: description, placeholders" in text and "+ $1 -> id, $2 -> tenant" in text
    # GoogleSQL binds by name: the order of params changes nothing
    google = copy.deepcopy(BASE)
    google["spanner"]["dialect"] = "googlesql"
    google["queries"]["get_thing"]["sql"] = "SELECT id FROM things WHERE tenant = @tenant AND id = @id"
    swapped = copy.deepcopy(google)
    swapped["queries"]["get_thing"]["params"] = _swapped()["queries"]["get_thing"]["params"]
    assert diff_policies(Policy.model_validate(google), Policy.model_validate(swapped)).empty


def test_explain_shows_the_placeholder_each_param_fills() -> None:
    compiled = compile_policy(load_policy_data(copy.deepcopy(BASE), base_dir=Path(".")))
    claims = {"iss": "okta", "sub": "u", "groups": ["staff"], "tenant": "t1"}
    ex = explain(compiled, request_facts("GET /things/7"), principal_for(compiled.model, claims))
    lines = render_explanation(compiled, ex).splitlines()
    assert 'param     $1 -> tenant = "t1"  (claim tenant)' in lines
    assert "param     $2 -> id = 7  (path)" in lines


def _numeric_findings(**param: Any) -> list[tuple[Any, str]]:
    data = copy.deepcopy(BASE)
    data["queries"]["get_thing"]["sql"] = (
        "SELECT id FROM things WHERE tenant = $1 AND id = $2 AND n > $3"
    )
    data["queries"]["get_thing"]["params"]["n"] = {"type": "numeric", **param}
    return validate_policy(Policy.model_validate(data))


def test_numeric_constraints_are_pg_numeric_values() -> None:
    big = "9" * 40  # beyond GoogleSQL's NUMERIC, within PG.NUMERIC
    assert _numeric_findings(min="-" + big, max=big, default="0." + "1" * 20) == []
    assert _numeric_findings(default="NaN") == []
    [(where, message)] = _numeric_findings(min="NaN")
    assert where[-1] == "min" and "must be a finite number" in message
    [(where, message)] = _numeric_findings(max="NaN")
    assert where[-1] == "max" and "must be a finite number" in message
    [(where, message)] = _numeric_findings(min="0", default="NaN")
    assert where[-1] == "default" and "NaN, outside every range" in message
    [(where, message)] = _numeric_findings(max="0." + "1" * 16384)
    assert "at most 16383 digits after the point" in message


def test_the_numeric_schema_is_pg_numerics() -> None:
    import re

    from gateway.openapi import json_schema_of

    for text in (False, True):
        spec = compile_param("n", Param(type="NUMERIC"), None, PG)
        pattern = re.compile(json_schema_of(spec, text=text)["pattern"])
        for good in ("NaN", "9" * 40, "-1." + "2" * 20, "0"):
            assert pattern.search(good), good
        for bad in ("Infinity", "1e5", "", "0." + "1" * 16384):
            assert not pattern.search(bad), bad
        google = json_schema_of(compile_param("n", Param(type="NUMERIC"), None), text=text)
        assert not re.search(google["pattern"], "NaN")
    array = compile_param("a", Param(type="ARRAY<NUMERIC>"), None, PG)
    assert re.search(json_schema_of(array)["items"]["anyOf"][0]["pattern"], "NaN")


def test_a_jsonb_value_holding_nul_is_refused() -> None:
    spec = compile_param("j", Param(type="jsonb"), None, PG)
    for value in ("a\u0000", {"k\u0000": 1}, {"k": [1, {"x": "\u0000"}]}):
        with pytest.raises(TypeProblem, match="cannot hold the character U\\+0000"):
            coerce(spec.ptype, value, from_text=False)
    with pytest.raises(TypeProblem, match="U\\+0000"):
        coerce(spec.ptype, '{"k": "\\u0000"}', from_text=True)  # as a query-string value
    array = compile_param("a", Param(type="jsonb[]"), None, PG).ptype
    with pytest.raises(TypeProblem, match="element 1: a PostgreSQL jsonb value"):
        coerce(array, [None, ["\u0000"]], from_text=False)
    assert coerce(spec.ptype, {"k": "\\u0000 as text"}, from_text=False)  # a backslash is fine
    # GoogleSQL's JSON is not jsonb
    assert coerce(ParamType("JSON"), "a\u0000", from_text=False) == "a\u0000"
