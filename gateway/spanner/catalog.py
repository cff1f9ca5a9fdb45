"""The tables and columns of a database, from INFORMATION_SCHEMA or from DDL (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

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


def _name(word: str, dialect: Dialect) -> str:
    """A name as the database spells it: PostgreSQL folds an unquoted one to lower case."""
    if word.startswith('"') and word.endswith('"') and len(word) > 1:
        return word[1:-1]
    word = word.strip("`")
    return word.lower() if dialect == POSTGRESQL else word


def catalog_from_ddl(statements: Iterable[str], dialect: Dialect = GOOGLESQL) -> Catalog:
    """A catalog from CREATE TABLE statements of ``dialect`` (other statements are ignored)."""
    tables: dict[str, tuple[str, ...]] = {}
    for statement in statements:
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
