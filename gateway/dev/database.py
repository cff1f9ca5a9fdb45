"""Create the demo database on a Cloud Spanner emulator and load its SQL files.

Contracts:

* Everything here talks to an emulator only: clients are built with
  ``AnonymousCredentials`` and ``client_options={"api_endpoint": host}``, which
  makes google-cloud-spanner use a plaintext gRPC channel to ``host`` without
  reading or changing ``SPANNER_EMULATOR_HOST`` in ``os.environ``.
* :func:`create_database` is repeatable: each call leaves a freshly created
  database holding exactly the given DDL and seed rows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.policy.pgsql import quoted_end

if TYPE_CHECKING:
    from google.cloud.spanner_v1 import Client

__all__ = [
    "DEFAULT_INSTANCE_CONFIG",
    "PG_SCHEMA_FILE",
    "PG_SEED_FILE",
    "SCHEMA_FILE",
    "SEED_FILE",
    "create_database",
    "emulator_client",
    "load_demo_sql",
    "split_statements",
]

DEFAULT_INSTANCE_CONFIG: Final = "emulator-config"
"""The one instance configuration the emulator offers."""

SCHEMA_FILE: Final = Path("dev/schema.sql")
SEED_FILE: Final = Path("dev/seed.sql")
PG_SCHEMA_FILE: Final = Path("dev/schema-postgresql.sql")  # the same shop, PostgreSQL dialect
PG_SEED_FILE: Final = Path("dev/seed-postgresql.sql")

# Admin long-running operations finish at once on the emulator; this only
# bounds a hung call.
_ADMIN_TIMEOUT_S: Final = 60.0


def emulator_client(emulator_host: str, *, project: str) -> Client:
    """Return a ``google.cloud.spanner_v1.Client`` bound to the emulator at ``emulator_host``.

    ``emulator_host`` is ``"host:port"`` (no scheme). Built-in metrics export is
    disabled: with ``api_endpoint`` (rather than ``SPANNER_EMULATOR_HOST``) the
    client would otherwise set up a Cloud Monitoring exporter.
    """
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import spanner_v1

    if "://" in emulator_host:
        raise ValueError(f"emulator_host must be host:port without a scheme, not {emulator_host!r}")
    return spanner_v1.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": emulator_host},
        disable_builtin_metrics=True,
    )


def _close_client(client: Client) -> None:
    """Close the gRPC channels a client opened for its admin APIs."""
    for attr in ("_instance_admin_api", "_database_admin_api"):
        api = getattr(client, attr, None)
        if api is not None:
            api.transport.close()


@contextlib.contextmanager
def _client(emulator_host: str, project: str) -> Iterator[Client]:
    client = emulator_client(emulator_host, project=project)
    try:
        yield client
    finally:
        _close_client(client)


class SeedError(RuntimeError):
    """A seed (DML) statement the emulator refused: which one, and its words."""


def create_database(
    emulator_host: str,
    *,
    project: str,
    instance: str,
    database: str,
    ddl: Sequence[str],
    dml: Sequence[str] = (),
    instance_config: str = DEFAULT_INSTANCE_CONFIG,
    dialect: str = "googlesql",
) -> None:
    """Create ``projects/{project}/instances/{instance}/databases/{database}`` afresh, in
    ``dialect`` (``googlesql`` or ``postgresql``).

    The instance is created (with ``instance_config``) when absent and kept when
    present. An existing database is dropped and recreated, so the result
    always holds exactly ``ddl`` and the rows of ``dml``. The DDL is applied in
    the CreateDatabase call (PostgreSQL: by UpdateDatabaseDdl right after it, the
    way Spanner's documentation creates PostgreSQL-dialect databases; the emulator
    would take them in CreateDatabase too, measured);
    the DML statements run in one read-write transaction (all or nothing).
    Raises ``google.api_core.exceptions`` errors from the emulator, and
    SeedError (a RuntimeError) when a DML statement fails.
    """
    from google.rpc import code_pb2

    with _client(emulator_host, project) as client:
        inst = client.instance(  # type: ignore[no-untyped-call]
            instance,
            configuration_name=f"projects/{project}/instanceConfigs/{instance_config}",
            display_name=instance,
            node_count=1,
        )
        if not inst.exists():
            inst.create().result(timeout=_ADMIN_TIMEOUT_S)

        if dialect == "postgresql":
            from google.cloud.spanner_admin_database_v1 import DatabaseDialect

            db = inst.database(database, database_dialect=DatabaseDialect.POSTGRESQL)
        else:
            db = inst.database(database, ddl_statements=list(ddl))
        if db.exists():
            db.drop()
        db.create().result(timeout=_ADMIN_TIMEOUT_S)
        if dialect == "postgresql" and ddl:
            db.update_ddl(list(ddl)).result(timeout=_ADMIN_TIMEOUT_S)
        if not dml:
            return

        statements = list(dml)

        def seed(transaction: Any) -> None:
            status, row_counts = transaction.batch_update(statements)
            if status.code != code_pb2.OK:
                failed = statements[len(row_counts)]
                raise SeedError(
                    f"seed statement #{len(row_counts) + 1} failed ({status.message}): {failed}"
                )

        # An explicit session rather than Database.run_in_transaction: the
        # latter starts a multiplexed-session maintenance thread that sleeps
        # 10 minutes between checks, and Database.close() joins it (blocking
        # for up to 10 minutes). A bare session has no thread to stop.
        session = db.session()
        session.create()
        try:
            session.run_in_transaction(seed)
        finally:
            with contextlib.suppress(Exception):
                session.delete()  # a no-op for multiplexed sessions
            db.spanner_api.transport.close()


_LINE_END = re.compile(r"[\r\n]")
_DIALECTS: Final = ("googlesql", "postgresql")
# PostgreSQL: $$ or $tag$ opens a dollar-quoted string (a tag is a name without '$').
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")


def _line(text: str, i: int) -> int:
    return text.count("\n", 0, i) + 1


def _googlesql_quoted_end(text: str, i: int) -> int | None:
    """The index past the string or backtick-quoted name opening at ``i`` (GoogleSQL: ``'``,
    ``"``, triple-quoted, backslash escapes), or None when none opens there."""
    ch = text[i]
    if ch not in "'\"`":
        return None
    quote = text[i : i + 3] if text[i : i + 3] == ch * 3 else ch
    j = i + len(quote)
    while True:
        if j >= len(text) or (len(quote) == 1 and text[j] == "\n"):
            raise ValueError(f"unterminated string literal starting on line {_line(text, i)}")
        if text[j] == "\\":
            j += 2
            continue
        if text.startswith(quote, j):
            return j + len(quote)
        j += 1


def _doubled_quote_end(text: str, i: int, quote: str, *, backslash: bool, what: str) -> int:
    """The index past the ``quote``-quoted text whose quote is at ``i``, read as the policy's
    PostgreSQL reader reads it (``pgsql.quoted_end``)."""
    end = quoted_end(text, i, quote, backslash=backslash)
    if end < 0:
        raise ValueError(f"unterminated {what} starting on line {_line(text, i)}")
    return end


def _postgresql_token_end(text: str, i: int) -> int | None:
    """The index past the PostgreSQL token at ``i`` that may hold ``;``, a comment marker or a
    quote as text (a string, a quoted name, a dollar-quoted string), or past a whole name or
    placeholder (so that ``a$$b`` and ``somE'x'`` are not read as quotes); None otherwise."""
    ch = text[i]
    if ch == "'":
        return _doubled_quote_end(text, i, "'", backslash=False, what="string literal")
    if ch == '"':
        return _doubled_quote_end(text, i, '"', backslash=False, what="quoted identifier")
    if ch == "$":
        if text[i + 1 : i + 2].isdigit():  # a placeholder, $1
            j = i + 1
            while j < len(text) and text[j].isdigit():
                j += 1
            return j
        tag = _DOLLAR_TAG.match(text, i)
        if tag is None:
            return None
        close = text.find(tag.group(0), tag.end())
        if close < 0:
            raise ValueError(
                f"unterminated dollar-quoted string starting on line {_line(text, i)}"
            )
        return close + len(tag.group(0))
    if ch.isascii() and not (ch.isalpha() or ch == "_"):
        return None
    nxt = text[i + 1 : i + 2]
    if ch in "eE" and nxt == "'":  # E'...': backslash escapes
        return _doubled_quote_end(text, i + 1, "'", backslash=True, what="string literal")
    if ch in "bBxXnN" and nxt == "'":
        return _doubled_quote_end(text, i + 1, "'", backslash=False, what="string literal")
    if ch in "uU" and nxt == "&" and text[i + 2 : i + 3] in ("'", '"'):
        quote = text[i + 2]
        what = "string literal" if quote == "'" else "quoted identifier"
        return _doubled_quote_end(text, i + 2, quote, backslash=False, what=what)
    j = i + 1
    while j < len(text) and (text[j].isalnum() or text[j] in "_$" or not text[j].isascii()):
        j += 1
    return j


def _block_comment_end(text: str, i: int, *, nested: bool) -> int:
    depth, j = 1, i + 2
    while depth:
        closes = text.find("*/", j)
        if closes < 0:
            raise ValueError(f"unterminated /* comment starting on line {_line(text, i)}")
        opens = text.find("/*", j) if nested else -1
        if 0 <= opens < closes:
            depth, j = depth + 1, opens + 2
        else:
            depth, j = depth - 1, closes + 2
    return j


def split_statements(sql_text: str, dialect: str) -> list[str]:
    """Split SQL text of ``dialect`` (``googlesql`` or ``postgresql``) into statements on ``;``,
    dropping comments and blank statements.

    ``--`` comments (and, in GoogleSQL, ``#`` ones) run to the end of the line and ``/* ... */``
    comments to their close (PostgreSQL's nest: ``/* a /* b */ c */`` is one); all are removed
    (a comment becomes one space). Semicolons and comment markers inside quoted text are kept:
    GoogleSQL's single-, double- or back-quoted strings and names (triple-quoted ones included,
    with backslash escapes); PostgreSQL's ``'...'`` strings (``''`` inside for a quote, a
    backslash an ordinary character), ``E'...'`` strings (backslash escapes), ``B''``, ``X''``,
    ``N''`` and ``U&''`` strings, ``"..."`` names (``""`` inside) and dollar-quoted strings
    (``$$...$$``, ``$tag$...$tag$``). In PostgreSQL ``#`` is an operator, not a comment.
    Returned statements are stripped and have no trailing ``;``. Raises ValueError on an
    unknown dialect, an unterminated string, quoted name or block comment.
    """
    if dialect not in _DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}: expected googlesql or postgresql")
    pg = dialect == "postgresql"
    line_comments = ("--",) if pg else ("--", "#")
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql_text)
    while i < n:
        ch = sql_text[i]
        if sql_text.startswith(line_comments, i):
            found = _LINE_END.search(sql_text, i)  # both dialects end a comment at \r or \n
            i = n if found is None else found.start()  # keep the line break itself
            current.append(" ")
            continue
        if sql_text.startswith("/*", i):
            i = _block_comment_end(sql_text, i, nested=pg)
            current.append(" ")
            continue
        if ch == ";":
            statements.append("".join(current))
            current = []
            i += 1
            continue
        end = _postgresql_token_end(sql_text, i) if pg else _googlesql_quoted_end(sql_text, i)
        end = i + 1 if end is None else end
        current.append(sql_text[i:end])
        i = end
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def load_demo_sql(repo_dir: Path, dialect: str = "googlesql") -> tuple[list[str], list[str]]:
    """Return ``(ddl, dml)``: the statements of ``dev/schema.sql`` and ``dev/seed.sql``, or of
    ``dev/schema-postgresql.sql`` and ``dev/seed-postgresql.sql`` for ``dialect`` postgresql.

    Paths are relative to ``repo_dir`` (the repository root). Raises
    FileNotFoundError when either file is missing.
    """
    pg = dialect == "postgresql"
    schema, seed = (PG_SCHEMA_FILE, PG_SEED_FILE) if pg else (SCHEMA_FILE, SEED_FILE)
    ddl = split_statements((repo_dir / schema).read_text(encoding="utf-8"), dialect)
    dml = split_statements((repo_dir / seed).read_text(encoding="utf-8"), dialect)
    return ddl, dml
