"""The least fine-grained access control each identity needs, derived from its statements (pure).

In the policy's ``spanner.dialect``: PostgreSQL's ``GRANT … TO <role>`` (GoogleSQL: ``TO ROLE``),
every name quoted in PostgreSQL (reserved words and mixed case alike). For every identity with a
``database_role``:

- ``CREATE ROLE <role>``;
- ``GRANT SELECT(<columns>) ON TABLE <t>``: the columns of ``t`` its statements name (in SELECT
  lists, WHERE, JOIN, ORDER BY, THEN RETURN...), all of them for ``SELECT *``/``t.*``/``THEN
  RETURN *``; columns an UPDATE only assigns (``SET c = ...``) and an INSERT only lists are
  written, not read, so they need no SELECT;
- ``GRANT INSERT | UPDATE | DELETE ON TABLE <t>`` for the table each DML statement writes;
- for identities that run DML, SELECT on the Idempotency-Key table's columns and INSERT, UPDATE on
  it (the gateway reads and writes its record in the write's transaction);
- for identities whose query a route's ``approval`` guards, SELECT on the approvals table's
  columns and INSERT, UPDATE on it (requests, decisions, and the use marked in the statement's
  own transaction: ``spanner/approvals.py``).

Columns are found by matching the statement's identifiers (outside strings and comments) against
the catalog of the tables it reads (``sqlscan``'s table list): an alias that happens to equal a
column name of such a table grants that column too. That errs towards one column too many, never
one too few (which would fail the statement with PERMISSION_DENIED). Tables and columns are written
as the catalog spells them.

``check()`` compares what is needed with the grants a live database holds (INFORMATION_SCHEMA):
what is missing (the statement will fail) and what is extra (more than least privilege).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.policy.compiled import CompiledPolicy, CompiledQuery
from gateway.policy.sqlscan import statement_tokens
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect
from gateway.spanner import approvals, idempotency
from gateway.spanner.catalog import Catalog, catalog_from_ddl

__all__ = [
    "Catalog",
    "Grant",
    "Needs",
    "Report",
    "catalog_from_ddl",
    "check",
    "ddl",
    "needs_of",
]

_LEXEME = re.compile(
    r"""
      (?P<comment>--[^\n]*|\#[^\n]*|/\*.*?\*/)
    | (?P<string>[rRbB]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
                              |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
    | (?P<quoted>`(?:\\.|[^`\\\n])*`)
    | (?P<param>@@?[A-Za-z_][A-Za-z0-9_]*)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[^\s])
    """,
    re.DOTALL | re.VERBOSE,
)


@dataclass(frozen=True, order=True)
class Grant:
    """One privilege: ``columns`` empty means the whole table."""

    table: str
    privilege: str  # SELECT, INSERT, UPDATE, DELETE
    columns: tuple[str, ...] = ()


@dataclass
class Needs:
    """What one database role needs: SELECT columns per table, and table-level writes."""

    role: str
    identities: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    select: dict[str, set[str]] = field(default_factory=dict)
    writes: set[tuple[str, str]] = field(default_factory=set)  # (table, privilege)
    unknown_tables: set[str] = field(default_factory=set)

    def grants(self, catalog: Catalog) -> list[Grant]:
        out = []
        for table, columns in self.select.items():
            order = catalog.tables.get(table, ())
            ordered = tuple(c for c in order if c in columns)
            out.append(Grant(table, "SELECT", ordered))
        out += [Grant(table, privilege) for table, privilege in self.writes]
        rank = {"SELECT": 0, "INSERT": 1, "UPDATE": 2, "DELETE": 3}
        return sorted(out, key=lambda g: (g.table.upper(), rank[g.privilege]))


def _tokens(sql: str, dialect: Dialect = GOOGLESQL) -> list[tuple[str, str]]:
    if dialect == POSTGRESQL:  # sqlscan's reader of the dialect: its names, folded or quoted
        kinds = {"word": "word", "quoted": "word", "param": "param", "string": "string"}
        return [
            (kinds.get(t.kind, "punct"), "" if t.kind == "string" else t.text)
            for t in statement_tokens(sql, POSTGRESQL)
        ]
    out = []
    for m in _LEXEME.finditer(sql):
        kind = m.lastgroup
        if kind in ("comment", "string") or kind is None:
            if kind == "string":
                out.append(("string", ""))
            continue
        text = m.group(kind)
        if kind == "quoted":
            out.append(("word", text[1:-1]))
        else:
            out.append((kind, text))
    return out


def _words(tokens: Sequence[tuple[str, str]]) -> list[str]:
    return [text.upper() for kind, text in tokens if kind == "word"]


def _star_tables(tokens: Sequence[tuple[str, str]]) -> tuple[bool, set[str]]:
    """(an unqualified ``*`` column list, the qualifiers of ``q.*``)."""
    bare, qualified = False, set()
    for i, (kind, text) in enumerate(tokens):
        if kind != "punct" or text != "*":
            continue
        before = tokens[i - 1] if i else ("", "")
        if before == ("punct", "."):
            if i >= 2 and tokens[i - 2][0] == "word":
                qualified.add(tokens[i - 2][1].upper())
        elif before[0] == "word" and before[1].upper() in (
            "SELECT", "RETURN", "RETURNING", "DISTINCT", "ALL",
        ):  # fmt: skip
            bare = True
        elif before == ("punct", ","):
            bare = True
    return bare, qualified


def _set_targets(tokens: Sequence[tuple[str, str]]) -> list[str]:
    """Columns an UPDATE assigns: ``SET a = ..., b = ...`` (at the top level, before WHERE)."""
    targets: list[str] = []
    depth = 0
    in_set = False
    expect = False
    for i, (kind, text) in enumerate(tokens):
        upper = text.upper()
        if kind == "punct" and text == "(":
            depth += 1
        elif kind == "punct" and text == ")":
            depth -= 1
        elif depth == 0 and kind == "word" and upper == "SET":
            in_set, expect = True, True
            continue
        elif depth == 0 and kind == "word" and upper in ("WHERE", "THEN", "RETURNING"):
            in_set = False
        elif in_set and depth == 0 and kind == "punct" and text == ",":
            expect = True
            continue
        if in_set and expect and kind == "word":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
            if nxt == ("punct", "="):
                targets.append(upper)
            expect = False
    return targets


def _insert_columns(tokens: Sequence[tuple[str, str]]) -> list[str]:
    """The column list of ``INSERT [INTO] t (a, b, ...)`` (GoogleSQL requires one)."""
    start = next((i for i, t in enumerate(tokens) if t == ("punct", "(")), None)
    if start is None:
        return []
    inside = tokens[start + 1 : _close(tokens, start)]
    return [text.upper() for kind, text in inside if kind == "word"]


def _close(tokens: Sequence[tuple[str, str]], start: int) -> int:
    depth = 0
    for j in range(start, len(tokens)):
        if tokens[j] == ("punct", "("):
            depth += 1
        elif tokens[j] == ("punct", ")"):
            depth -= 1
            if depth == 0:
                return j
    return len(tokens)


def _dml_verb(tokens: Sequence[tuple[str, str]]) -> str | None:
    for kind, text in tokens:
        if kind == "word":
            upper = text.upper()
            return upper if upper in ("INSERT", "UPDATE", "DELETE") else None
    return None


_NOT_ALIAS = frozenset(
    {
        "WHERE", "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "OUTER", "ON", "USING",
        "GROUP", "ORDER", "LIMIT", "OFFSET", "UNION", "INTERSECT", "EXCEPT", "HAVING", "WINDOW",
        "QUALIFY", "TABLESAMPLE", "SET", "VALUES", "SELECT", "THEN", "FOR", "WITH", "AS", "AND",
        "OR", "NOT", "IN", "IS", "BETWEEN", "LIKE",
    }
)  # fmt: skip


def _aliases(tokens: Sequence[tuple[str, str]], tables: Sequence[str]) -> dict[str, str]:
    """Name or alias (upper case) -> table, for the tables the statement names."""
    by_name = {t.upper(): t for t in tables}
    out = dict(by_name)
    for i, (kind, text) in enumerate(tokens):
        table = by_name.get(text.upper()) if kind == "word" else None
        if table is None or (i > 0 and tokens[i - 1] == ("punct", ".")):
            continue
        j = i + 1
        if j < len(tokens) and tokens[j][0] == "word" and tokens[j][1].upper() == "AS":
            j += 1
        if j < len(tokens) and tokens[j][0] == "word" and tokens[j][1].upper() not in _NOT_ALIAS:
            out.setdefault(tokens[j][1].upper(), table)
    return out


def _mentions(
    tokens: Sequence[tuple[str, str]], aliases: Mapping[str, str], tables: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Table -> word (upper case) -> how often the statement may name it as that table's column:
    ``q.word`` counts for the table ``q`` names, a bare ``word`` for every table."""
    counts: dict[str, dict[str, int]] = {t: {} for t in tables}
    for i, (kind, text) in enumerate(tokens):
        if kind != "word":
            continue
        if i + 1 < len(tokens) and tokens[i + 1] == ("punct", "."):
            continue  # a qualifier (or a table name), not a column
        word = text.upper()
        qualified = i >= 2 and tokens[i - 1] == ("punct", ".") and tokens[i - 2][0] == "word"
        owner = aliases.get(tokens[i - 2][1].upper()) if qualified else None
        for table in [owner] if owner is not None else tables:
            counts[table][word] = counts[table].get(word, 0) + 1
    return counts


def _add_query(needs: Needs, query: CompiledQuery, catalog: Catalog) -> None:
    """A column of a table the statement names is read when its name occurs (bare, or qualified
    by that table or its alias) more often than it is only written (an INSERT's column list, an
    UPDATE's SET targets); ``*`` reads them all."""
    tokens = _tokens(query.model.sql, query.dialect)
    tables: list[str] = []
    for name in query.sql.tables:
        table = catalog.table(name)
        if table is None:
            needs.unknown_tables.add(name)
        elif table not in tables:
            tables.append(table)
    if not tables:
        return
    verb = _dml_verb(tokens) if query.is_dml else None
    written_only: list[str] = []
    if verb == "INSERT":
        written_only = _insert_columns(tokens)
    elif verb == "UPDATE":
        written_only = _set_targets(tokens)
    aliases = _aliases(tokens, tables)
    mentions = _mentions(tokens, aliases, tables)
    bare_star, qualified = _star_tables(tokens)
    star_tables = {aliases.get(q) for q in qualified}
    for table in tables:
        columns = catalog.tables[table]
        counts = mentions[table]
        everything = bare_star or table in star_tables or None in star_tables
        read = (
            set(columns)
            if everything
            else {c for c in columns if counts.get(c.upper(), 0) > written_only.count(c.upper())}
        )
        if read:
            needs.select.setdefault(table, set()).update(read)
    if verb is not None:
        needs.writes.add((tables[0], verb))  # sqlscan lists the written table first


def needs_of(policy: CompiledPolicy, catalog: Catalog) -> dict[str, Needs]:
    """Database role -> what it needs, from every query of ``policy`` (roles in name order)."""
    out: dict[str, Needs] = {}
    identities = policy.model.identities
    guarded = {r.query_name for r in policy.routes if r.model.approval is not None}
    for name, query in sorted(policy.queries.items()):
        identity = query.model.identity
        role = identities[identity].database_role
        if role is None:
            continue
        needs = out.setdefault(role, Needs(role))
        if identity not in needs.identities:
            needs.identities.append(identity)
        needs.queries.append(name)
        _add_query(needs, query, catalog)
        if query.is_dml:
            table = idempotency.TABLE
            needs.select.setdefault(table, set()).update(
                ("KeyHash", "RequestHash", "Response", "CommittedAt", "ExpiresAt")
            )
            needs.writes |= {(table, "INSERT"), (table, "UPDATE")}
        if name in guarded:
            needs.select.setdefault(approvals.TABLE, set()).update(approvals.COLUMNS)
            needs.writes |= {(approvals.TABLE, "INSERT"), (approvals.TABLE, "UPDATE")}
    return dict(sorted(out.items()))


def _name(name: str, dialect: Dialect) -> str:
    """``name`` as the dialect's DDL must write it: PostgreSQL always quotes it (a name that is
    not all lower case would fold, and a reserved word such as ``user`` or ``select`` would not
    parse), GoogleSQL writes it as it is."""
    if dialect != POSTGRESQL:
        return name
    return '"' + name.replace('"', '""') + '"'


def _grant_sql(grant: Grant, role: str, dialect: Dialect) -> str:
    columns = ", ".join(_name(c, dialect) for c in grant.columns)
    what = f"{grant.privilege}({columns})" if grant.columns else grant.privilege
    table = _name(grant.table, dialect)
    if dialect == POSTGRESQL:
        return f"GRANT {what} ON TABLE {table} TO {_name(role, dialect)}"
    return f"GRANT {what} ON TABLE {table} TO ROLE {role}"


def ddl(needs: Mapping[str, Needs], catalog: Catalog, dialect: Dialect = GOOGLESQL) -> list[str]:
    """The statements, role by role: CREATE ROLE, then its grants (no trailing ``;``), in
    ``dialect``'s syntax (PostgreSQL: ``GRANT … TO role``, every name quoted)."""
    out = []
    for role, need in needs.items():
        out.append(f"CREATE ROLE {_name(role, dialect)}")
        out += [_grant_sql(g, role, dialect) for g in need.grants(_with_idempotency(catalog))]
    return out


def _with_idempotency(catalog: Catalog) -> Catalog:
    """The catalog with the gateway's own tables (as ``spangate init-db`` creates them)."""
    tables = dict(catalog.tables)
    if catalog.table(idempotency.TABLE) is None:
        tables[idempotency.TABLE] = (
            "KeyHash", "RequestHash", "Response", "CommittedAt", "ExpiresAt"
        )
    if catalog.table(approvals.TABLE) is None:
        tables[approvals.TABLE] = approvals.COLUMNS
    return Catalog(tables)


@dataclass
class Report:
    """``missing``: needed, not granted; ``extra``: granted, not needed (per role)."""

    missing: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.missing.values()) and not any(self.extra.values())


def _fold(dialect: Dialect) -> Callable[[str], str]:
    """How the dialect compares names: GoogleSQL's ignore case, PostgreSQL's are exact."""
    return (lambda name: name) if dialect == POSTGRESQL else str.upper


def check(
    needs: Mapping[str, Needs],
    catalog: Catalog,
    *,
    roles: Iterable[str],
    table_grants: Iterable[tuple[str, str, str]],
    column_grants: Iterable[tuple[str, str, str, str]],
    dialect: Dialect = GOOGLESQL,
) -> Report:
    """Compare ``needs`` with live grants: ``roles`` (INFORMATION_SCHEMA.ROLES), ``table_grants``
    (GRANTEE, TABLE_NAME, PRIVILEGE_TYPE) and ``column_grants`` (GRANTEE, TABLE_NAME, COLUMN_NAME,
    PRIVILEGE_TYPE). A table-level grant covers every column; it is extra when it covers a
    column (or a privilege) the role's statements do not need. Names compare as the dialect
    compares them: GoogleSQL's case-insensitively, PostgreSQL's exactly (``"Orders"`` and
    ``orders`` are two tables there)."""
    fold = _fold(dialect)
    catalog = _with_idempotency(catalog)
    names = {fold(t): t for t in catalog.tables}
    existing_roles = {fold(r) for r in roles}
    held_tables: dict[str, set[tuple[str, str]]] = {}
    held_columns: dict[str, set[tuple[str, str, str]]] = {}
    spelled: dict[str, str] = {}  # folded column -> as the live grant spells it
    for grantee, table, privilege in table_grants:
        held_tables.setdefault(fold(grantee), set()).add((fold(table), privilege.upper()))
    for grantee, table, column, privilege in column_grants:
        spelled.setdefault(fold(column), column)
        held_columns.setdefault(fold(grantee), set()).add(
            (fold(table), fold(column), privilege.upper())
        )
    report = Report()
    for role, need in needs.items():
        tables = held_tables.get(fold(role), set())
        columns = held_columns.get(fold(role), set())
        read = {fold(t): {fold(c) for c in cs} for t, cs in need.select.items()}
        writes = {(fold(t), p) for t, p in need.writes}
        missing = [] if fold(role) in existing_roles else [f"CREATE ROLE {role}"]
        for grant in need.grants(catalog):
            t = fold(grant.table)
            if (t, grant.privilege) in tables:
                continue
            if grant.columns:
                missing += [
                    f"{grant.privilege}({c}) ON TABLE {grant.table}"
                    for c in grant.columns
                    if (t, fold(c), grant.privilege) not in columns
                ]
            else:
                missing.append(f"{grant.privilege} ON TABLE {grant.table}")
        extra = []
        for t, p in sorted(tables):
            shown = names.get(t, t)
            if p == "SELECT":
                beyond = [
                    c for c in catalog.tables.get(shown, ()) if fold(c) not in read.get(t, set())
                ]
                if beyond or t not in read:
                    extra.append(f"SELECT ON TABLE {shown} (covers {', '.join(beyond) or 'all'})")
            elif (t, p) not in writes:
                extra.append(f"{p} ON TABLE {shown}")
        for t, c, p in sorted(columns):
            if (t, p) in tables:
                continue
            unneeded = c not in read.get(t, set()) if p == "SELECT" else (t, p) not in writes
            if unneeded:
                extra.append(f"{p}({spelled.get(c, c)}) ON TABLE {names.get(t, t)}")
        report.missing[role] = missing
        report.extra[role] = extra
    return report
