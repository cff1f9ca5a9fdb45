"""The tables and columns of a database, from INFORMATION_SCHEMA or from DDL (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.policy.pgsql import tokenize
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect, SqlProblem

__all__ = ["Catalog", "catalog_from_ddl"]


@dataclass(frozen=True)
class Catalog:
    """Tables and their columns, in schema order (from INFORMATION_SCHEMA or a DDL file)."""

    tables: Mapping[str, tuple[str, ...]]

    def table(self, name: str) -> str | None:
        """The catalog's spelling of table ``name`` (case-insensitive), or None."""
        wanted = name.rsplit(".", 1)[-1].strip("`").upper()
        return next((t for t in self.tables if t.upper() == wanted), None)


_CREATE_TABLE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[`\"]?([\w.]+)[`\"]?\s*\(", re.IGNORECASE
)
_NOT_COLUMNS = {"CONSTRAINT", "FOREIGN", "CHECK", "PRIMARY"}
_PG_NOT_COLUMNS = _NOT_COLUMNS | {"UNIQUE", "EXCLUDE", "LIKE"}  # unquoted: reserved words


def _name(word: str, dialect: Dialect) -> str:
    """A name as the database spells it: PostgreSQL folds an unquoted one to lower case."""
    if word.startswith('"') and word.endswith('"') and len(word) > 1:
        return word[1:-1]
    word = word.strip("`")
    return word.lower() if dialect == POSTGRESQL else word


def _pg_create_table(statement: str) -> tuple[str, tuple[str, ...]] | None:
    """The table and columns of a PostgreSQL CREATE TABLE, read by the policy's PostgreSQL
    tokenizer: quoted names as written (``"My Table"``, ``"first name"``), unquoted ones folded,
    a schema-qualified name (``public."T2"``) as its last part. None for another statement;
    ValueError for text the tokenizer cannot read, or a CREATE TABLE it cannot follow."""
    try:
        tokens = tokenize(statement, ())
    except SqlProblem as exc:
        raise ValueError(f"cannot read {statement[:60]!r}: {exc}") from None
    if len(tokens) < 2 or not (tokens[0].is_word("CREATE") and tokens[1].is_word("TABLE")):
        return None
    i = 2
    if [t.text.upper() for t in tokens[i : i + 3] if t.kind == "word"] == ["IF", "NOT", "EXISTS"]:
        i += 3
    name: str | None = None
    while i < len(tokens) and tokens[i].kind in ("word", "quoted"):
        name = tokens[i].text
        if i + 1 < len(tokens) and tokens[i + 1].is_punct("."):
            i += 2
            continue
        i += 1
        break
    if name is None or i >= len(tokens) or not tokens[i].is_punct("("):
        raise ValueError(f"cannot read the table name of {statement[:60]!r}")
    columns: list[str] = []
    depth, first = 0, True
    for token in tokens[i:]:
        if token.is_punct("("):
            depth += 1
            continue
        if token.is_punct(")"):
            depth -= 1
            if depth == 0:
                return name, tuple(columns)
            continue
        if depth != 1:
            continue
        if token.is_punct(","):
            first = True
            continue
        if first:
            first = False
            if token.kind == "quoted" or (
                token.kind == "word" and token.text.upper() not in _PG_NOT_COLUMNS
            ):
                columns.append(token.text)
    raise ValueError(f"unterminated column list in {statement[:60]!r}")


def catalog_from_ddl(statements: Iterable[str], dialect: Dialect = GOOGLESQL) -> Catalog:
    """A catalog from CREATE TABLE statements of ``dialect`` (other statements are ignored).
    PostgreSQL's are read by its tokenizer (``_pg_create_table``); ValueError when one cannot
    be read."""
    tables: dict[str, tuple[str, ...]] = {}
    for statement in statements:
        if dialect == POSTGRESQL:
            found = _pg_create_table(statement)
            if found is not None:
                tables[found[0]] = found[1]
            continue
        m = _CREATE_TABLE.match(statement)
        if m is None:
            continue
        body_start = m.end()
        depth, j = 1, body_start
        parts: list[str] = []
        current: list[str] = []
        while j < len(statement) and depth:
            c = statement[j]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            if c == "," and depth == 1:
                parts.append("".join(current))
                current = []
            else:
                current.append(c)
            j += 1
        parts.append("".join(current))
        columns = []
        for part in parts:
            words = part.split()
            if words and words[0].upper() not in _NOT_COLUMNS:
                columns.append(_name(words[0], dialect))
        quoted = statement[m.start(1) - 1 : m.start(1)] == '"'
        table = m.group(1).rsplit(".", 1)[-1]
        tables[_name(f'"{table}"' if quoted else table, dialect)] = tuple(columns)
    return Catalog(tables)
