"""Keyset pagination, the policy's side: the statement's ORDER BY and LIMIT read from its text, the
loader's refusals (located), the analysed keyset types, binding (the page size within its bounds,
cursor parameters null and never the caller's), the decision setting the caller's cursor aside,
explain, and ``policy test``'s first pages and ``expect: {paginated: ...}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from builders import EXAMPLE, base, caller, compiled

from gateway.cli import main
from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.compiled import compile_policy
from gateway.policy.decide import RequestFacts, decide
from gateway.policy.explain import explain, explanation_record, render_explanation
from gateway.policy.load import load_policy
from gateway.policy.pagination import column_findings, paginated_queries, read_order
from gateway.policy.simulate import request_facts
from gateway.policy.testing import run_case_files

POLICY = compile_policy(load_policy(EXAMPLE, env={}))


# --- the end of the statement, read from its text -----------------------------------------------


@pytest.mark.parametrize(
    ("sql", "items", "limit", "problem"),
    [
        ("SELECT a, b FROM t ORDER BY a, b LIMIT @n", (("a", "ASC"), ("b", "ASC")), "n", None),
        ("SELECT a FROM t ORDER BY t.a DESC, `b` asc LIMIT @n",
         (("a", "DESC"), ("b", "ASC")), "n", None),
        # the top level only: a subquery's or a window's ORDER BY is not the result's
        ("SELECT a, ROW_NUMBER() OVER (ORDER BY z) AS r FROM t WHERE x IN "
         "(SELECT x FROM u ORDER BY x LIMIT 1) ORDER BY a LIMIT @n", (("a", "ASC"),), "n", None),
        ("SELECT a FROM t UNION ALL SELECT a FROM u ORDER BY a LIMIT @n;", (("a", "ASC"),), "n",
         None),
        ("SELECT a FROM t", (), None, "it has no ORDER BY at its top level"),
        ("(SELECT a FROM t ORDER BY a LIMIT @n)", (), None, "it has no ORDER BY at its top level"),
        ("SELECT a FROM t ORDER BY a + 1 LIMIT @n", (), None,
         "ORDER BY item 1 (a + 1) is not a column name, optionally followed by ASC or DESC"),
        ("SELECT a FROM t ORDER BY 1 LIMIT @n", (), None,
         "ORDER BY item 1 (1) is not a column name, optionally followed by ASC or DESC"),
        ("SELECT a FROM t ORDER BY a NULLS LAST LIMIT @n", (), None,
         "ORDER BY item 1 (a NULLS LAST) is not a column name, optionally followed by ASC or DESC"),
        ("SELECT a FROM t ORDER BY a", (("a", "ASC"),), None,
         "it has no LIMIT after its ORDER BY"),
        ("SELECT a FROM t ORDER BY a LIMIT 10", (("a", "ASC"),), None,
         "it ends with LIMIT 10 after its ORDER BY"),
        ("SELECT a FROM t ORDER BY a LIMIT @n OFFSET @o", (("a", "ASC"),), None,
         "it ends with LIMIT @n OFFSET @o after its ORDER BY"),
    ],
)  # fmt: skip
def test_the_order_and_limit_are_read_from_the_top_level(
    sql: str, items: tuple[tuple[str, str], ...], limit: str | None, problem: str | None
) -> None:
    order = read_order(sql)
    assert (order.items, order.limit, order.problem) == (items, limit, problem)


# --- the loader: refusals located ----------------------------------------------------------------


def edited(tmp_path: Path, *changes: tuple[str, str]) -> tuple[Path, str]:
    text = EXAMPLE.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path, text


def refused(path: Path) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path, env={})
    return caught.value.problems


def at(path: Path, text: str, needle: str, start: int = 0) -> str:
    offset = text.index(needle, start)
    line = text.count("\n", 0, offset) + 1
    return f"{path}:{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


LIMIT = "      limit:           {type: INT64, from: page_size}"
AFTER_ORDER = "      after_order:     {type: STRING, from: cursor.OrderId}"
KEYSET = "      keyset: [CreatedAt, OrderId]"
PAGE_SIZE = "      page_size: {default: 20, max: 100}"
ORDER_BY = "      ORDER BY CreatedAt DESC, OrderId\n"
PAGINATION = (
    "    pagination:                   # answers carry next_cursor while orders remain "
    "(docs/pagination.md)\n"
    "      keyset: [CreatedAt, OrderId]          # the ORDER BY, ending with a unique key\n"
    "      page_size: {default: 20, max: 100}    # ?limit= from 1 to 100, 20 when not given\n"
)


@pytest.mark.parametrize(
    ("changes", "needle", "message"),
    [
        ([(AFTER_ORDER, "      after_order:     {type: STRING, from: cursor.OrderID}")],
         "cursor.OrderID",
         "from: cursor.OrderID names no keyset column of query list_orders (keyset: CreatedAt, "
         "OrderId); did you mean 'OrderId'?"),
        ([(AFTER_ORDER, "      after_order:     {type: STRING, from: cursor.CreatedAt}")],
         "cursor.CreatedAt}       # (null",
         "keyset column CreatedAt is already carried by parameter after_created"),
        ([(AFTER_ORDER, "      after_order:     {type: STRING, from: cursor.OrderId, "
                        "max_length: 36}")],
         "36}",
         "a cursor parameter takes no max_length: its value is the previous page's last "
         "OrderId, or null on the first page"),
        ([(AFTER_ORDER, "      after_order:     {type: STRING, from: cursor.OrderId, "
                        "nullable: true}")],
         "true}       # (null",
         "a cursor parameter takes no nullable"),
        ([(AFTER_ORDER, "      after_order:     {type: JSON, from: cursor.OrderId}")],
         "JSON",
         "a cursor parameter is one of STRING, INT64, TIMESTAMP, DATE, NUMERIC, BYTES, BOOL, "
         "FLOAT64, as its keyset column is, not JSON"),
        ([(LIMIT, "      limit:           {type: INT64, from: page_size, max: 50}")],
         "50}",
         "the page size parameter takes no max: its bounds are pagination.page_size's "
         "(default, max), and it is at least 1"),
        ([(LIMIT, "      limit:           {type: INT64, from: page_size, default: 5}")],
         "5}",
         "the page size parameter takes no default"),
        ([(LIMIT, "      limit:           {type: STRING, from: page_size}")],
         "STRING, from: page_size",
         "the page size parameter is INT64, not STRING"),
        ([(LIMIT, "      limit:           {type: INT64, min: 1, max: 100, default: 20}")],
         "{default: 20, max: 100}",
         "no parameter carries the page size: declare one (type: INT64, from: page_size) and "
         "end the statement with LIMIT @it"),
        ([(KEYSET, "      keyset: [CreatedAt, OrderId, Status]")],
         "Status]",
         "keyset column Status has no parameter: declare one with from: cursor.Status and read "
         "past it in the statement's WHERE"),
        ([(KEYSET, "      keyset: [CreatedAt, OrderId, CreatedAt]")],
         "[CreatedAt, OrderId, CreatedAt]",
         "a column is listed twice"),
        ([(KEYSET, "      keyset: []")], "[]", "must not be empty"),
        ([(PAGE_SIZE, "      page_size: {default: 200, max: 100}")],
         "{default: 200",
         "default 200 is larger than max 100"),
        ([(PAGE_SIZE, "      page_size: {default: 20, max: 500}")],
         "500}",
         "pages of up to 500 rows, but max_rows is 100: raise max_rows or lower page_size.max"),
        ([(PAGE_SIZE, "      page_size: {default: 20}")],
         "{default: 20}",
         "max"),
        ([(ORDER_BY, "      ORDER BY CreatedAt DESC\n")],
         "|\n      SELECT OrderId",
         "ORDER BY CreatedAt DESC does not list exactly the keyset (CreatedAt, OrderId), in its "
         "order: the statement must end with ORDER BY CreatedAt, OrderId (each ASC or DESC) "
         "LIMIT @limit"),
        ([(ORDER_BY, "      ORDER BY OrderId, CreatedAt DESC\n")],
         "|\n      SELECT OrderId",
         "ORDER BY OrderId ASC, CreatedAt DESC does not list exactly the keyset"),
        ([(ORDER_BY + "      LIMIT @limit\n", ORDER_BY + "      LIMIT @limit OFFSET 0\n")],
         "|\n      SELECT OrderId",
         "query list_orders pages by keyset: its statement must end with ORDER BY CreatedAt, "
         "OrderId (each ASC or DESC) LIMIT @limit, but it ends with LIMIT @limit OFFSET 0 after "
         "its ORDER BY"),
        ([("      SELECT OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt\n      FROM "
           "Orders\n      WHERE TenantId = @tenant\n        AND (@status",
           "      SELECT OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt AS Created\n"
           "      FROM Orders\n      WHERE TenantId = @tenant\n        AND (@status")],
         "CreatedAt, OrderId]",
         "keyset column CreatedAt is not returned by query list_orders (its columns: OrderId, "
         "CustomerId, Status, TotalCents, Currency, Created)"),
    ],
)  # fmt: skip
def test_a_bad_pagination_is_refused_where_it_is_written(
    tmp_path: Path, changes: list[tuple[str, str]], needle: str, message: str
) -> None:
    path, text = edited(tmp_path, *changes)
    problems = refused(path)
    assert any(message in str(p) for p in problems), [str(p) for p in problems]
    (problem,) = [p for p in problems if message in str(p)]
    start = text.index("  list_orders:")  # the needle is the first one in list_orders
    assert str(problem).startswith(at(path, text, needle, start)), str(problem)


def test_a_masked_keyset_column_is_refused(tmp_path: Path) -> None:
    path, text = edited(tmp_path, (
        "    max_rows: 100\n    staleness: 10s",
        "    mask:\n      OrderId: {with: hash}\n    max_rows: 100\n    staleness: 10s",
    ))  # fmt: skip
    (problem,) = refused(path)
    assert str(problem).startswith(at(path, text, "OrderId]")), str(problem)
    assert "keyset column OrderId is masked: the cursor would carry its clear value" in str(problem)


def test_pagination_applies_to_reads_and_its_parameters_need_it(tmp_path: Path) -> None:
    path, _ = edited(
        tmp_path,
        ("      currency:    {type: STRING, enum: [USD, EUR, GBP], default: USD}\n",
         "      currency:    {type: STRING, enum: [USD, EUR, GBP], default: USD}\n"
         "    pagination: {keyset: [OrderId], page_size: {default: 1, max: 1}}\n"),
        (PAGINATION, ""),
    )  # fmt: skip
    messages = {str(p).split(": ", 2)[-1] for p in refused(path)}
    assert "query create_order is DML: pagination pages through what a read returns (a " \
           "write's THEN RETURN rows come back whole)" in messages  # fmt: skip
    assert "from: page_size needs the query's pagination (keyset and page_size)" in messages
    assert "from: cursor.CreatedAt needs the query's pagination (keyset and page_size)" in messages


def test_a_parameter_named_cursor_is_refused_in_a_paginated_query(tmp_path: Path) -> None:
    path, text = edited(
        tmp_path,
        ("        AND TotalCents >= @min_total_cents\n",
         "        AND TotalCents >= @min_total_cents AND (@cursor IS NULL OR TRUE)\n"),
        (LIMIT, LIMIT + "\n      cursor:          {type: STRING, nullable: true}"),
    )  # fmt: skip
    (problem,) = refused(path)
    start = text.index("  list_orders:")
    assert str(problem).startswith(at(path, text, "{type: STRING, nullable: true}", start))
    assert "a paginated query's caller passes its cursor as 'cursor'" in str(problem)


def test_a_path_parameter_cannot_carry_the_page_size(tmp_path: Path) -> None:
    path, _ = edited(tmp_path, (
        "  - path: /v1/orders\n    method: GET", "  - path: /v1/order-pages/{limit}\n    method: GET"
    ))  # fmt: skip
    (problem,) = refused(path)
    assert "path parameter {limit} is bound from: page_size in query list_orders: the " \
           "pagination's parameters cannot come from the path" in str(problem)  # fmt: skip


def test_the_keys_note_of_policy_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPANGATE_CURSOR_KEYS", raising=False)
    assert main(["policy", "check", str(EXAMPLE)]) == 0
    assert "the paginated queries (list_orders) need SPANGATE_CURSOR_KEYS" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("SPANGATE_CURSOR_KEYS", "x")
    assert main(["policy", "check", str(EXAMPLE)]) == 0
    assert "SPANGATE_CURSOR_KEYS" not in capsys.readouterr().err
    assert paginated_queries(POLICY.model) == ["list_orders"]


# --- the analysed columns (start-up, reload, check --database) -------------------------------


def test_analysed_columns_decide_the_keyset_and_its_types() -> None:
    query = POLICY.model.queries["list_orders"]
    good = [("OrderId", "STRING"), ("CreatedAt", "TIMESTAMP")]
    assert column_findings("list_orders", query, good) == []
    found = column_findings(
        "list_orders", query, [("orderid", "STRING"), ("CreatedAt", "DATE")]
    )
    assert found == [
        (("queries", "list_orders", "params", "after_created", "type"),
         "parameter after_created carries keyset column CreatedAt, which is DATE: declare it "
         "type: DATE"),
        (("queries", "list_orders", "pagination", "keyset", 1),
         "keyset column OrderId is not returned by query list_orders (its columns: orderid, "
         "CreatedAt); did you mean 'orderid'?"),
    ]  # fmt: skip
    found = column_findings("list_orders", query, [("OrderId", "JSON"), ("CreatedAt", "TIMESTAMP")])
    assert found == [(("queries", "list_orders", "pagination", "keyset", 1),
                      "keyset column OrderId of query list_orders is JSON; a keyset column is "
                      "one of STRING, INT64, TIMESTAMP, DATE, NUMERIC, BYTES, BOOL, FLOAT64")]


def test_the_compiled_paging() -> None:
    paging = POLICY.queries["list_orders"].paging
    assert paging is not None
    assert (paging.keyset, paging.directions, paging.cursor_params) == (
        ("CreatedAt", "OrderId"), ("DESC", "ASC"), ("after_created", "after_order")
    )  # fmt: skip
    assert (paging.page_param, paging.default, paging.max) == ("limit", 20, 100)
    assert len(paging.fingerprint) == 64
    assert POLICY.queries["get_order"].paging is None


# --- binding and the decision ------------------------------------------------------------------


def decided(target: str, body: dict[str, Any] | None = None, **claims: Any) -> Any:
    principal = caller(POLICY, **({"groups": ["support"], "tenant": "t1"} | claims))
    return decide(POLICY, request_facts(target, body), principal)


def test_a_first_page_binds_the_cursor_parameters_to_null_and_the_page_size() -> None:
    decision = decided("GET /v1/orders?limit=5")
    assert decision.allow and decision.cursor is None
    assert decision.bound.values["limit"] == 5
    assert decision.bound.values["after_created"] is None
    assert decision.bound.values["after_order"] is None
    assert decision.bound.cursor_bound == {"after_created", "after_order"}
    assert decided("GET /v1/orders").bound.values["limit"] == 20  # page_size.default


@pytest.mark.parametrize(
    ("target", "reason", "param"),
    [
        ("GET /v1/orders?limit=0", "param-invalid", "limit"),
        ("GET /v1/orders?limit=101", "param-invalid", "limit"),
        ("GET /v1/orders?limit=ten", "param-invalid", "limit"),
        ("GET /v1/orders?after_created=2026-01-01T00:00:00Z", "param-unknown", "after_created"),
        ("GET /v1/orders?after_order=O-1", "param-unknown", "after_order"),
    ],
)
def test_the_page_size_is_bounded_and_cursor_parameters_are_not_the_callers(
    target: str, reason: str, param: str
) -> None:
    decision = decided(target)
    assert (decision.allow, decision.reason) == (False, reason)
    assert decision.problem.extra["param"] == param


def test_the_decision_sets_the_callers_cursor_aside() -> None:
    decision = decided("GET /v1/orders?limit=2&cursor=abc")
    assert decision.allow and decision.cursor == "abc"
    assert "abc" not in repr(decision)  # never shown
    twice = decided("GET /v1/orders?cursor=a&cursor=b")
    assert twice.allow and twice.cursor == ["a", "b"]  # no cursor: refused when opened
    principal = caller(POLICY, scp=["orders.read"], tenant="t1")
    tool = decide(POLICY, RequestFacts("MCP", "list_orders", body={"cursor": None, "limit": 3},
                                       tool="list_orders"), principal)  # fmt: skip
    assert tool.allow and tool.cursor is None and tool.bound.values["limit"] == 3
    tool = decide(POLICY, RequestFacts("MCP", "list_orders", body={"cursor": "xyz"},
                                       tool="list_orders"), principal)  # fmt: skip
    assert tool.allow and tool.cursor == "xyz"
    denied = decided("GET /v1/orders?cursor=abc", groups=["marketing"])
    assert denied.reason == "no-allow-role" and denied.cursor == "abc"
    other = decided("GET /v1/orders/O-1?cursor=abc")  # not paginated: an unknown parameter
    assert other.reason == "param-unknown" and other.cursor is None


def test_a_query_without_pagination_knows_nothing_of_cursors() -> None:
    policy = compiled(base())
    principal = caller(policy, groups=["staff"], tenant="t1")
    decision = decide(policy, request_facts("GET /things/1?cursor=x"), principal)
    assert decision.reason == "param-unknown" and decision.cursor is None


# --- explain and policy tests ----------------------------------------------------------------------


def test_explain_shows_the_keyset_the_page_size_and_the_first_page() -> None:
    principal = caller(POLICY, groups=["support"], tenant="t1")
    ex = explain(POLICY, request_facts("GET /v1/orders?limit=5"), principal)
    text = render_explanation(POLICY, ex)
    assert "param     after_created = null  (cursor CreatedAt (null: the first page))" in text
    assert "pages     keyset CreatedAt DESC, OrderId ASC; page size 5 (limit: default 20, " \
           "max 100); next_cursor while rows remain" in text  # fmt: skip
    assert "no cursor: the first page" in text
    record = explanation_record(ex)["pagination"]
    assert record == {
        "keyset": [{"column": "CreatedAt", "direction": "DESC", "param": "after_created"},
                   {"column": "OrderId", "direction": "ASC", "param": "after_order"}],
        "page_size": {"param": "limit", "value": 5, "default": 20, "max": 100},
        "cursor": "none",
    }  # fmt: skip
    given = explain(POLICY, request_facts("GET /v1/orders?cursor=abc"), principal)
    assert "a cursor is given: the gateway opens it" in render_explanation(POLICY, given)
    assert explanation_record(given)["pagination"]["cursor"] == "given"
    assert explanation_record(explain(POLICY, request_facts("GET /v1/orders/O-1"), principal))[
        "pagination"
    ] is None


def cases(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(f"policy: {EXAMPLE}\ncases:\n{body}")
    return path


def test_policy_tests_decide_first_pages_and_say_whether_a_query_is_paginated(
    tmp_path: Path,
) -> None:
    path = cases(tmp_path, """\
  - name: the first page
    claims: {iss: okta, groups: [support], tenant: t1}
    request: GET /v1/orders?limit=3
    expect: {allow: true, paginated: true,
             params: {tenant: t1, status: null, min_total_cents: 0, limit: 3,
                      after_created: null, after_order: null}}
  - name: one order is no list
    claims: {iss: okta, groups: [support], tenant: t1}
    request: GET /v1/orders/O-1
    expect: {allow: true, paginated: false}
  - name: wrong
    claims: {iss: okta, groups: [support], tenant: t1}
    request: GET /v1/orders/O-1
    expect: {allow: true, paginated: true}
""")
    [suite] = run_case_files([path], env={})
    assert [o.passed for o in suite.outcomes] == [True, True, False]
    assert suite.outcomes[2].lines[-2:] == ("- paginated: true", "+ paginated: false")


def test_a_policy_test_with_a_cursor_is_refused(tmp_path: Path) -> None:
    path = cases(tmp_path, """\
  - name: the second page
    claims: {iss: okta, groups: [support], tenant: t1}
    request: GET /v1/orders?cursor=abc
    expect: {allow: true}
  - name: over MCP
    claims: {iss: okta, scp: [orders.read], tenant: t1}
    request: MCP list_orders
    arguments: {cursor: abc}
    expect: {allow: true}
""")
    with pytest.raises(PolicyError) as caught:
        run_case_files([path], env={})
    problems = [str(p) for p in caught.value.problems]
    assert len(problems) == 2
    assert all("a policy test decides a paginated query's first page: leave the cursor out"
               in p for p in problems)  # fmt: skip
    assert problems[0].startswith(f"{path}:5:14") and problems[1].startswith(f"{path}:9:14")
