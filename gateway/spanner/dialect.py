"""The database's SQL dialect, asked of the database itself, and how it must match the policy's.

Asked by a query that both dialects answer alike (``information_schema.database_options``,
``database_dialect``: ``GOOGLE_STANDARD_SQL`` or ``POSTGRESQL``), under an identity's role: the
admin API's ``database_dialect`` needs admin rights the gateway should not hold, and the emulator
answers it "unspecified" for a GoogleSQL database (measured). ``dialect_problem`` is pure.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = ["DIALECT_SQL", "database_dialect", "dialect_problem"]

DIALECT_SQL = (
    "SELECT option_value FROM information_schema.database_options "
    "WHERE option_name = 'database_dialect'"
)
_NAMES: dict[str, Dialect] = {"GOOGLE_STANDARD_SQL": GOOGLESQL, "POSTGRESQL": POSTGRESQL}
_SPELLED = {GOOGLESQL: "GoogleSQL", POSTGRESQL: "PostgreSQL"}


async def database_dialect(database: Any) -> Dialect | None:
    """The dialect of ``database`` (an asyncio Database), or None when it names another."""
    async with database.snapshot() as snapshot:
        stream = await snapshot.execute_sql(
            DIALECT_SQL, request_options={"request_tag": "spangate dialect"}
        )
        rows = [row async for row in stream]
    value = rows[0][0] if rows else None
    return _NAMES.get(str(value)) if value is not None else None


def dialect_problem(declared: Dialect, actual: Dialect | None, database: str) -> str | None:
    """What to say when the policy's ``spanner.dialect`` is not the database's (else None)."""
    if actual is None or actual == declared:
        return None
    default = " (the default)" if declared == GOOGLESQL else ""
    return (
        f"the database {database} is a {_SPELLED[actual]}-dialect database, but the policy's "
        f"statements are {_SPELLED[declared]} (spanner.dialect: {declared}{default}): set "
        f"spanner.dialect: {actual} and write the statements in that dialect"
    )
