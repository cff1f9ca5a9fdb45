"""``spangate grants`` and ``spangate init-db``: the database side of a policy.

    spangate grants --policy PATH [--schema FILE] [--check]
    spangate init-db --policy PATH [--print]

Both reach the database the policy names (``SPANGATE_SPANNER_PROJECT/INSTANCE/DATABASE`` and
``SPANNER_EMULATOR_HOST`` apply) with the operator's own credentials, never an identity's role.
``grants --schema FILE`` works offline from the schema's DDL. ``spangate policy check --database``
(``check_on_database``) has Spanner PLAN every statement of a policy.

Exit codes: 0 done (``--check``: the grants match); 1 ``--check`` found differences, or Spanner
failed; 2 the policy or the schema could not be used, or ``--check`` cannot read grants here
(the emulator has no fine-grained access control).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

from gateway.cli.files import read_text
from gateway.errors import PolicyError

__all__ = ["check_on_database", "register"]

_CREATE_TABLE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[`\"]?(\w+)[`\"]?", re.I
)
_DDL_TIMEOUT_SECONDS = 300.0
# The roles of a database (``grants --check``): PostgreSQL's information_schema names the view
# enabled_roles.
_ROLES = {
    "googlesql": "SELECT ROLE_NAME FROM INFORMATION_SCHEMA.ROLES",
    "postgresql": "SELECT role_name FROM information_schema.enabled_roles",
}


def register(sub: Any) -> None:
    grants = sub.add_parser(
        "grants",
        help="print the least fine-grained access control DDL each identity needs",
        description="CREATE ROLE and GRANT statements derived from the statements each identity "
        "runs (SELECT on the columns read, INSERT/UPDATE/DELETE on the tables written).",
    )
    grants.add_argument("--policy", type=Path, required=True, help="policy file or folder")
    grants.add_argument(
        "--schema", type=Path, help="read tables and columns from this DDL file, not the database"
    )
    grants.add_argument(
        "--check",
        action="store_true",
        help="compare with the live database's roles and grants (INFORMATION_SCHEMA)",
    )
    grants.set_defaults(handler=_grants)

    init = sub.add_parser(
        "init-db", help="create the gateway's own tables (Idempotency-Key records, approvals)"
    )
    init.add_argument("--policy", type=Path, required=True, help="policy file or folder")
    init.add_argument("--print", action="store_true", help="print the DDL instead of applying it")
    init.set_defaults(handler=_init_db)


def _settings_and_policy(path: Path) -> tuple[Any, Any, Any]:
    from gateway.runtime import load_compiled, spanner_target
    from gateway.settings import Settings

    settings = Settings(policy=path)
    policy = load_compiled(path, os.environ)
    return settings, policy, spanner_target(settings, policy)


def _database(settings: Any, target: Any) -> Any:
    """The target database through a blocking client, with the operator's credentials."""
    from gateway.spanner.identities import default_client_factory

    client = default_client_factory(settings.spanner_emulator_host)(target.project, None)
    return client.instance(target.instance).database(target.database)


def _rows(database: Any, sql: str) -> list[list[Any]]:
    with database.snapshot() as snapshot:
        return [list(row) for row in snapshot.execute_sql(sql)]


def _schema(policy: Any) -> str:
    """The INFORMATION_SCHEMA name of the default schema: '' (GoogleSQL), 'public' (PostgreSQL)."""
    return "public" if policy.model.spanner.dialect == "postgresql" else ""


def _live_catalog(database: Any, policy: Any) -> Any:
    from gateway.spanner.grants import Catalog

    tables: dict[str, list[str]] = {}
    for table, column in _rows(
        database,
        "SELECT TABLE_NAME, COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS "  # noqa: S608
        f"WHERE TABLE_SCHEMA = '{_schema(policy)}' ORDER BY TABLE_NAME, ORDINAL_POSITION",
    ):
        tables.setdefault(table, []).append(column)
    return Catalog({t: tuple(c) for t, c in tables.items()})


def _fail(message: str, code: int = 1) -> int:
    print(f"spangate: {message}", file=sys.stderr)
    return code


def _grants(args: argparse.Namespace) -> int:
    from google.api_core import exceptions as gexc

    from gateway.dev.database import split_statements
    from gateway.spanner import grants

    settings, policy, target = _settings_and_policy(args.policy)
    database = None
    try:
        if args.schema is not None:
            dialect = policy.model.spanner.dialect
            catalog = grants.catalog_from_ddl(
                split_statements(read_text(args.schema, "--schema"), dialect), dialect
            )
        else:
            database = _database(settings, target)
            catalog = _live_catalog(database, policy)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot read the schema: {exc}", 2)
    except gexc.GoogleAPICallError as exc:
        return _fail(f"cannot read the schema of {target.database}: {exc}")
    needs = grants.needs_of(policy, catalog)
    if not args.check:
        _print_ddl(policy, needs, catalog)
        return 0
    database = database or _database(settings, target)
    try:
        roles = [r[0] for r in _rows(database, _ROLES[policy.model.spanner.dialect])]
        tables = _rows(
            database,
            "SELECT GRANTEE, TABLE_NAME, PRIVILEGE_TYPE FROM INFORMATION_SCHEMA.TABLE_PRIVILEGES",
        )
        columns = _rows(
            database,
            "SELECT GRANTEE, TABLE_NAME, COLUMN_NAME, PRIVILEGE_TYPE "
            "FROM INFORMATION_SCHEMA.COLUMN_PRIVILEGES",
        )
    except (gexc.InvalidArgument, gexc.NotFound) as exc:
        # the emulator: GoogleSQL answers InvalidArgument, PostgreSQL NotFound (no
        # information_schema.enabled_roles)
        return _fail(
            f"cannot read roles and grants here ({exc.message}): --check needs a real Spanner "
            "database (the emulator has no fine-grained access control)",
            2,
        )
    report = grants.check(
        needs,
        catalog,
        roles=roles,
        table_grants=[(g, t, p) for g, t, p in tables],
        column_grants=[(g, t, c, p) for g, t, c, p in columns],
        dialect=policy.model.spanner.dialect,
    )
    for role in needs:
        for line in report.missing.get(role, []):
            print(f"{role}: missing {line}")
        for line in report.extra.get(role, []):
            print(f"{role}: extra {line} (more than its statements need)")
    if report.ok:
        print(f"{target.database}: every role holds exactly what its statements need")
        return 0
    return 1


def _print_ddl(policy: Any, needs: Any, catalog: Any) -> None:
    from gateway.spanner import grants

    print(f"-- spangate grants for {policy.loaded.files[0] if policy.loaded.files else 'policy'}")
    for identity, spec in sorted(policy.model.identities.items()):
        if spec.database_role is None:
            print(
                f"-- identity {identity} has no database_role: it runs with its principal's "
                "IAM access, not least privilege"
            )
    for role, need in needs.items():
        print(
            f"\n-- role {role}: identities {', '.join(need.identities)}; "
            f"queries {', '.join(need.queries)}"
        )
        for name in sorted(need.unknown_tables):
            print(f"-- (table {name} is not in the schema: no grant for it)")
        for statement in grants.ddl({role: need}, catalog, policy.model.spanner.dialect):
            print(f"{statement};")


def _shipped_ddl(policy: Any) -> list[str]:
    from gateway.spanner.ddl import shipped_ddl

    return shipped_ddl(policy)


def _init_db(args: argparse.Namespace) -> int:
    from google.api_core import exceptions as gexc

    settings, policy, target = _settings_and_policy(args.policy)
    statements = _shipped_ddl(policy)
    if args.print:
        for statement in statements:
            print(f"{statement};\n")
        return 0
    database = _database(settings, target)
    try:
        existing = {
            row[0].upper()
            for row in _rows(
                database,
                "SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES "  # noqa: S608
                f"WHERE TABLE_SCHEMA = '{_schema(policy)}'",
            )
        }
        todo = []
        for statement in statements:
            m = _CREATE_TABLE.match(statement)
            if m is not None and m.group(1).upper() in existing:
                print(f"{m.group(1)}: exists")
                continue
            todo.append(statement)
        if todo:
            database.update_ddl(todo).result(timeout=_DDL_TIMEOUT_SECONDS)
    except gexc.GoogleAPICallError as exc:
        return _fail(f"init-db on {target.database} failed: {exc}")
    for statement in todo:
        m = _CREATE_TABLE.match(statement)
        print(f"{m.group(1)}: created" if m else f"{statement.splitlines()[0]}: applied")
    return 0


def check_on_database(
    policy: Any, *, connect_timeout: float = 10.0, ok_line: str | None = None
) -> int:
    """``spangate policy check --database``: Spanner PLANs every statement (see ``analyze.py``).

    0 when Spanner accepts them all (``ok_line`` is printed, then their result columns); a
    PolicyError (exit 2) naming each refused query; 1 when Spanner cannot be reached. Neither
    failure prints ``ok_line``."""
    from gateway.runtime import spanner_target
    from gateway.settings import Settings
    from gateway.spanner.execute import Executor
    from gateway.spanner.identities import (
        Databases,
        default_async_client_factory,
        default_client_factory,
    )

    settings = Settings()
    emulator = settings.spanner_emulator_host
    databases = Databases(
        spanner_target(settings, policy),
        policy.model.identities,
        default_client_factory(emulator),
        default_async_client_factory(emulator),
    )

    async def run() -> Any:
        executor = Executor(databases, emulator=bool(emulator))
        try:
            return await executor.analyze(policy, connect_timeout=connect_timeout)
        finally:
            await databases.aclose()

    try:
        analysis = asyncio.run(run())
    except PolicyError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable Spanner, a timeout: say it, exit 1
        return _fail(f"Spanner could not analyse the statements: {type(exc).__name__}: {exc}")
    if ok_line is not None:
        print(ok_line)
    for name, shape in analysis.shapes.items():
        columns = ", ".join(f"{c.name} {c.type}" for c in shape.columns) or "(no rows)"
        print(f"  {name}: {columns}")
    for identity, ready in analysis.idempotency_ready.items():
        if not ready:
            print(f"  warning: identity {identity} cannot use Idempotency-Key (spangate init-db)")
    for identity, ready in analysis.approvals_ready.items():
        if not ready:
            print(f"  warning: identity {identity} cannot use the approvals table (spangate init-db)")
    for warning in analysis.warnings:
        print(warning.as_warning(), file=sys.stderr)
    return 0
