"""The Spanner emulator launcher and the demo database, against the real emulator.

These tests start their own emulators (one per module for the demo database, plus
short-lived ones for the start/stop checks) on free loopback ports and stop them by PID.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.dev.database import (
    create_database,
    emulator_client,
    load_demo_sql,
    split_statements,
)
from gateway.dev.emulator import (
    EMULATOR_DIR_ENV,
    EmulatorMissing,
    EmulatorPortInUse,
    EmulatorProcess,
    EmulatorStartError,
    find_emulator,
    start_emulator,
)

REPO = Path(__file__).resolve().parents[2]
PROJECT, INSTANCE, DATABASE = "emu-test-project", "emu-test", "shop"

# Rows per table per tenant in dev/seed.sql.
EXPECTED_COUNTS = {
    "Tenants": {"t1": 1, "t2": 1},
    "Customers": {"t1": 3, "t2": 2},
    "Orders": {"t1": 4, "t2": 3},
    "OrderItems": {"t1": 6, "t2": 4},
}

try:
    find_emulator()
except EmulatorMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)


# --- fixtures (module-local: they start emulators these tests own) -------------------------


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """A fresh emulator for this module (a stale or shared one could hide bugs)."""
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with start_emulator(log_path=log) as process:
        yield process


@pytest.fixture(scope="module")
def demo_sql() -> tuple[list[str], list[str]]:
    return load_demo_sql(REPO)


@pytest.fixture(scope="module")
def seeded(emulator: EmulatorProcess, demo_sql: tuple[list[str], list[str]]) -> float:
    """Creates the demo database; returns how long create_database took (seconds)."""
    ddl, dml = demo_sql
    started = time.perf_counter()
    create_database(
        emulator.host, project=PROJECT, instance=INSTANCE, database=DATABASE, ddl=ddl, dml=dml
    )
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def database(emulator: EmulatorProcess, seeded: float) -> Any:
    """A ``Database`` on the seeded demo database.

    Not closed on purpose: ``Database.close()`` joins the multiplexed-session maintenance
    thread, which sleeps 10 minutes between checks. The thread is a daemon.
    """
    client = emulator_client(emulator.host, project=PROJECT)
    return client.instance(INSTANCE).database(DATABASE)


def _query(database: Any, sql: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
    from google.cloud.spanner_v1 import param_types

    types = {name: param_types.STRING for name in params or {}}
    with database.snapshot() as snapshot:
        return [list(row) for row in snapshot.execute_sql(sql, params=params, param_types=types)]


def _listening(port: int) -> bool:
    """Whether any socket on this machine is in LISTEN state on ``port`` (IPv4 or IPv6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the demo database ----------------------------------------------------------------------


def test_demo_sql_files_split_into_statements(demo_sql: tuple[list[str], list[str]]) -> None:
    ddl, dml = demo_sql
    assert [s.split()[:3] for s in ddl] == [
        ["CREATE", "TABLE", "Tenants"],
        ["CREATE", "TABLE", "Customers"],
        ["CREATE", "TABLE", "Orders"],
        ["CREATE", "TABLE", "OrderItems"],
        ["CREATE", "INDEX", "OrdersByStatus"],
    ]
    assert all(s.startswith("INSERT INTO") for s in dml)
    assert not any("--" in s or s.endswith(";") for s in ddl + dml)


def test_create_database_is_fast(seeded: float) -> None:
    # Measured here: ~0.02 s (plus ~0.2 s of imports on a first call in a process).
    assert seeded < 5.0


def test_row_counts_per_table_per_tenant(database: Any) -> None:
    for table, expected in EXPECTED_COUNTS.items():
        # Table names come from the constant above, not from input.
        sql = f"SELECT TenantId, COUNT(*) FROM {table} GROUP BY TenantId"  # noqa: S608
        assert {tenant: count for tenant, count in _query(database, sql)} == expected, table


def test_same_order_id_in_both_tenants_with_different_totals(database: Any) -> None:
    rows = _query(
        database,
        "SELECT TenantId, TotalCents, Currency FROM Orders WHERE OrderId = @order_id",
        {"order_id": "O-1001"},
    )
    by_tenant = {tenant: (total, currency) for tenant, total, currency in rows}
    assert set(by_tenant) == {"t1", "t2"}
    assert by_tenant["t1"] != by_tenant["t2"]
    assert by_tenant == {"t1": (7499, "USD"), "t2": (126400, "EUR")}


def test_customer_c1_in_both_tenants(database: Any) -> None:
    rows = _query(database, "SELECT TenantId, Name FROM Customers WHERE CustomerId = 'C-1'")
    assert sorted(tenant for tenant, _ in rows) == ["t1", "t2"]
    assert len({name for _, name in rows}) == 2


def test_order_totals_match_their_items(database: Any) -> None:
    mismatches = _query(
        database,
        "SELECT o.TenantId, o.OrderId, o.TotalCents, SUM(i.Quantity * i.UnitPriceCents) "
        "FROM Orders o JOIN OrderItems i USING (TenantId, OrderId) "
        "GROUP BY o.TenantId, o.OrderId, o.TotalCents "
        "HAVING o.TotalCents != SUM(i.Quantity * i.UnitPriceCents)",
    )
    assert mismatches == []


def test_orders_by_status_index_is_usable(database: Any) -> None:
    rows = _query(
        database,
        "SELECT OrderId FROM Orders@{FORCE_INDEX=OrdersByStatus} "
        "WHERE TenantId = @tenant AND Status = 'PAID' ORDER BY CreatedAt DESC",
        {"tenant": "t1"},
    )
    assert rows == [["O-1001"]]


def test_create_database_again_starts_from_a_clean_seed(
    emulator: EmulatorProcess, demo_sql: tuple[list[str], list[str]], database: Any
) -> None:
    ddl, dml = demo_sql
    other = "shop-recreate"  # its own database: the module's shared one stays untouched
    create_database(
        emulator.host, project=PROJECT, instance=INSTANCE, database=other, ddl=ddl, dml=dml
    )
    client = emulator_client(emulator.host, project=PROJECT)
    db = client.instance(INSTANCE).database(other)
    db.run_in_transaction(
        lambda tx: tx.execute_update(
            "INSERT INTO Tenants (TenantId, Name) VALUES ('t3', 'Initech')"
        )
    )
    assert _query(db, "SELECT COUNT(*) FROM Tenants") == [[3]]
    started = time.perf_counter()
    create_database(
        emulator.host, project=PROJECT, instance=INSTANCE, database=other, ddl=ddl, dml=dml
    )
    assert time.perf_counter() - started < 5.0
    # Dropping the database ended the old Database's (multiplexed) session: the client
    # does not recover from "Session not found", so a recreated database needs new objects.
    fresh = client.instance(INSTANCE).database(other)
    assert _query(fresh, "SELECT COUNT(*) FROM Tenants") == [[2]]


def test_client_does_not_need_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPANNER_EMULATOR_HOST", raising=False)
    client = emulator_client("127.0.0.1:1", project=PROJECT)
    assert client._emulator_host == "127.0.0.1:1"
    assert "SPANNER_EMULATOR_HOST" not in os.environ
    with pytest.raises(ValueError, match="without a scheme"):
        emulator_client("http://127.0.0.1:1", project=PROJECT)


# --- the launcher -----------------------------------------------------------------------


def test_refuses_a_port_an_emulator_already_serves(emulator: EmulatorProcess) -> None:
    with pytest.raises(EmulatorPortInUse, match=str(emulator.port)):
        start_emulator(port=emulator.port)
    assert emulator.is_running()


def test_refuses_a_port_another_server_listens_on() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(EmulatorPortInUse):
            start_emulator(port=listener.getsockname()[1])


def test_reports_the_log_tail_when_the_port_cannot_be_bound(tmp_path: Path) -> None:
    with socket.socket() as bound:  # bound but not listening: connects are refused
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(EmulatorStartError, match="Address already in use"):
            start_emulator(port=bound.getsockname()[1], log_path=tmp_path / "emu.log")


def test_stop_leaves_nothing_listening(tmp_path: Path) -> None:
    log = tmp_path / "emu.log"
    process = start_emulator(log_path=log, extra_args=["--log_requests"])
    try:
        pid, port = process.pid, process.port
        assert process.host == f"127.0.0.1:{port}"
        assert _answers(port) and _listening(port)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3] == [
            str(find_emulator()).encode(),
            b"--host_port",
            f"127.0.0.1:{port}".encode(),
        ]
    finally:
        process.stop()
    assert process.returncode is not None and not process.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not _answers(port)
    assert not _listening(port)
    process.stop()  # idempotent
    # --log_requests took effect: the readiness probe was logged.
    assert "ListInstanceConfigs" in log.read_text(errors="replace")


def test_context_manager_stops_and_fault_injection_flag_is_accepted() -> None:
    with start_emulator(extra_args=["--enable_fault_injection"]) as process:
        port = process.port
        assert process.is_running()
    assert not process.is_running()
    assert not _answers(port)


def test_bad_flag_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    with pytest.raises(EmulatorStartError, match="Unknown command line flag 'no_such_flag'"):
        start_emulator(extra_args=["--no_such_flag"], log_path=tmp_path / "emu.log")


def test_missing_emulator_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EMULATOR_DIR_ENV, str(tmp_path))
    with pytest.raises(EmulatorMissing) as info:
        find_emulator()
    message = str(info.value)
    assert str(tmp_path / "emulator_main") in message
    assert "gcloud components install cloud-spanner-emulator" in message
    assert "google-cloud-cli-spanner-emulator" in message
    assert "gcr.io/cloud-spanner-emulator/emulator" in message
    with pytest.raises(EmulatorMissing):
        start_emulator()
    monkeypatch.delenv(EMULATOR_DIR_ENV)
    assert find_emulator().name == "emulator_main"


# --- split_statements -------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["googlesql", "postgresql"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1", ["SELECT 1"]),
        ("-- only a comment;\n\n;;", []),
        ("SELECT 1; -- trailing; comment\nSELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'a--b' -- c\n;", ["SELECT 'a--b'"]),
        ("SELECT 'a;b', \"c;d\";", ["SELECT 'a;b', \"c;d\""]),
        ("SELECT /* a; b */ 1; SELECT 2", ["SELECT   1", "SELECT 2"]),
    ],
)
def test_split_statements_alike_in_both_dialects(
    text: str, expected: list[str], dialect: str
) -> None:
    assert split_statements(text, dialect) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 'a;b', \"c;d\", `e;f`;", ["SELECT 'a;b', \"c;d\", `e;f`"]),
        ("SELECT 'it\\'s; fine'; SELECT 2", ["SELECT 'it\\'s; fine'", "SELECT 2"]),
        ("SELECT '''x;\ny'''; SELECT 2", ["SELECT '''x;\ny'''", "SELECT 2"]),
        ("SELECT /* a; b */ 1; # hash; comment\nSELECT 2", ["SELECT   1", "SELECT 2"]),
        ("SELECT 1 /* a /* b */ ; SELECT 2", ["SELECT 1", "SELECT 2"]),  # no nesting
    ],
)
def test_split_googlesql(text: str, expected: list[str]) -> None:
    assert split_statements(text, "googlesql") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # '#' is an operator, not a comment: the ';' after it ends the statement
        ("SELECT 1 # 3; SELECT 2", ["SELECT 1 # 3", "SELECT 2"]),
        ("SELECT $$a;b$$; SELECT $fn$ ; 'x' -- $fn$;", ["SELECT $$a;b$$", "SELECT $fn$ ; 'x' -- $fn$"]),
        ("SELECT $a$ $b$; $a$; SELECT 2", ["SELECT $a$ $b$; $a$", "SELECT 2"]),
        ("SELECT 1 /* a /* b; */ c; */; SELECT 2", ["SELECT 1", "SELECT 2"]),  # nested
        ("SELECT 'it''s; fine'; SELECT 2", ["SELECT 'it''s; fine'", "SELECT 2"]),
        ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", "SELECT 2"]),  # no backslash escape
        ("SELECT E'it\\'s; fine'; SELECT 2", ["SELECT E'it\\'s; fine'", "SELECT 2"]),
        ("SELECT e'\\\\'; SELECT 2", ["SELECT e'\\\\'", "SELECT 2"]),
        ("SELECT X'1F', B'01', N'a;b', U&'c;d'; SELECT 2",
         ["SELECT X'1F', B'01', N'a;b', U&'c;d'", "SELECT 2"]),
        ('SELECT "a"";b" FROM t; SELECT 2', ['SELECT "a"";b" FROM t', "SELECT 2"]),
        ("SELECT 'a\n;b'; SELECT 2", ["SELECT 'a\n;b'", "SELECT 2"]),  # a line break in a string
        ("SELECT a$$b, $1; SELECT 2", ["SELECT a$$b, $1", "SELECT 2"]),  # $ in a name
        ("SELECT somE'x;y'; SELECT 2", ["SELECT somE'x;y'", "SELECT 2"]),  # somE is a name
        ("SELECT `a;b`", ["SELECT `a", "b`"]),  # a backtick is no quote in PostgreSQL
    ],
)  # fmt: skip
def test_split_postgresql(text: str, expected: list[str]) -> None:
    assert split_statements(text, "postgresql") == expected


@pytest.mark.parametrize(
    ("dialect", "text"),
    [
        ("googlesql", "SELECT 'open;"),
        ("googlesql", "SELECT 1 /* open;"),
        ("googlesql", "SELECT 'a\nb'"),
        ("postgresql", "SELECT 'open;"),
        ("postgresql", "SELECT E'open\\';"),
        ("postgresql", 'SELECT "open;'),
        ("postgresql", "SELECT $t$ open; $T$"),
        ("postgresql", "SELECT 1 /* a /* b */ ;"),
    ],
)
def test_split_statements_rejects_unterminated(dialect: str, text: str) -> None:
    with pytest.raises(ValueError, match="unterminated"):
        split_statements(text, dialect)


def test_split_statements_needs_a_known_dialect() -> None:
    with pytest.raises(ValueError, match="unknown SQL dialect 'mysql'"):
        split_statements("SELECT 1", "mysql")


@pytest.mark.parametrize("dialect", ["googlesql", "postgresql"])
def test_the_demo_files_split_into_their_statements(dialect: str) -> None:
    ddl, dml = load_demo_sql(REPO, dialect)
    assert ddl and all(s.split()[0] == "CREATE" for s in ddl), ddl
    assert dml and all(s.split()[0] == "INSERT" for s in dml), dml
