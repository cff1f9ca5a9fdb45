"""The database's SQL dialect, asked of the database itself, and how it must match the policy's.

Asked by a query that both dialects answer alike (``information_schema.database_options``,
``database_dialect``: ``GOOGLE_STANDARD_SQL`` or ``POSTGRESQL``), under an identity's role: the
admin API's ``database_dialect`` needs admin rights the gateway should not hold, and the emulator
answers it "unspecified" for a GoogleSQL database (measured). ``dialect_problem`` is pure.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = [
    "DIALECT_SQL",
    "database_dialect",
    "dialect_answer",
    "dialect_hint",
    "dialect_named",
    "dialect_problem",
]

DIALECT_SQL = (
    "SELECT option_value FROM information_schema.database_options "
    "WHERE option_name = 'database_dialect'"
)
_NAMES: dict[str, Dialect] = {"GOOGLE_STANDARD_SQL": GOOGLESQL, "POSTGRESQL": POSTGRESQL}
_SPELLED = {GOOGLESQL: "GoogleSQL", POSTGRESQL: "PostgreSQL"}


async def dialect_answer(database: Any) -> str | None:
    """What ``database`` (an asyncio Database) says its dialect is, as it says it
    (``GOOGLE_STANDARD_SQL``, ``POSTGRESQL``), or None when the query returns no row."""
    async with database.snapshot() as snapshot:
        stream = await snapshot.execute_sql(
            DIALECT_SQL, request_options={"request_tag": "spangate dialect"}
        )
        rows = [row async for row in stream]
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


def dialect_named(answer: str | None) -> Dialect | None:
    """The dialect ``dialect_answer`` names, or None (no answer, or a dialect not known here)."""
    return _NAMES.get(answer) if answer is not None else None


async def database_dialect(database: Any) -> Dialect | None:
    """The dialect of ``database``, or None when it does not say or names another."""
    return dialect_named(await dialect_answer(database))


def dialect_hint(declared: Dialect) -> str:
    """Said with a refused statement when the database did not say its dialect."""
    other = POSTGRESQL if declared == GOOGLESQL else GOOGLESQL
    return (
        f" (the database did not say its dialect: if it is a {_SPELLED[other]}-dialect "
        f"database, set spanner.dialect: {other})"
    )


def dialect_problem(declared: Dialect, actual: Dialect | None, database: str) -> str | None:
    """What to say when the policy's ``spanner.dialect`` is not the database's (else None)."""
    if actual is None or actual == declared:
        return None
    default = ", the default" if declared == GOOGLESQL else ""
    return (
        f"the database {database} is a {_SPELLED[actual]}-dialect database, but the policy's "
        f"statements are {_SPELLED[declared]} (spanner.dialect: {declared}{default}): set "
        f"spanner.dialect: {actual} and write the statements in that dialect"
    )
