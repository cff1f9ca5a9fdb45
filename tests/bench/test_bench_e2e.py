"""The end-to-end benchmark (``python -m bench e2e``) keeps working: its structure, never its speed.

A ``--quick`` run with 1 s phases at one concurrency starts everything for real (emulators, the
OpenID provider, ``spangate serve``, the hand-written service, wrk, the raw drivers) and must
report every target, compute every ratio and write its files. The foreign-CPU guard is off there
(the machine running the tests is busy by design); its rule and the aggregation that leaves
refused phases out are tested on plain values. The raw unary driver's read is held to the
documented client's on the session's emulator: the same one row, decoded alike.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.e2e import cpu, driver, report
from bench.e2e.suite import LABELS, TARGETS, Options, Phase, parse
from bench.e2e.workload import ORDER_ID

REPO = Path(__file__).resolve().parents[2]


def test_a_quick_run_reports_every_target_computes_the_ratios_and_writes_its_files(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--quick", "--conc", "2", "--max-foreign", "1",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    written = sorted(p.name for p in out.iterdir())
    stamps = {Path(name).stem for name in written}
    assert len(stamps) == 1, written  # one dated set, and no latest.*: a smoke run is no result
    (stamp,) = stamps
    assert written == sorted(f"{stamp}.{ext}" for ext in ("json", "md", "png", "svg"))
    assert (out / f"{stamp}.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (out / f"{stamp}.svg").read_text()

    result = json.loads((out / f"{stamp}.json").read_text())
    assert {(p["target"], p["conc"]) for p in result["phases"]} == {(t, 2) for t in TARGETS}
    for phase in result["phases"]:
        assert phase["requests"] > 0 and not phase["refused"], phase
        cpu_ms = phase["cpu_ms"]
        assert cpu_ms["emulator"] is not None and cpu_ms["driver"] is not None, phase
        assert (cpu_ms["server"] is None) == phase["target"].startswith("raw-"), phase
        assert 0 <= phase["foreign"] <= 1
    assert [c["target"] for c in result["cells"]] == list(TARGETS)
    (ratios,) = result["ratios"]
    assert ratios["conc"] == 2
    for other in ("raw-unary", "raw-sync", "raw-async", "fastapi"):
        for metric in ("throughput", "p50"):
            value = ratios[f"{metric} gateway/{other}"]
            assert value is not None and math.isfinite(value) and value > 0, (metric, other)
    assert set(result["machine"]) == {"cores", "cpu", "kernel"}
    versions = result["versions"]
    for name in ("python", "google-cloud-spanner", "emulator", "wrk", "spangate"):
        assert versions[name] and versions[name] != "unknown", (name, versions)

    text = (out / f"{stamp}.md").read_text()
    assert "Not a result" in text and f"]({stamp}.png)" in text
    for target in TARGETS:
        assert f"| {LABELS[target]} | 2 |" in text
    assert "Against the baseline" not in text and "spangate baseline" not in text
    assert "req/s gateway / raw sync" in text and "req/s gateway / FastAPI" in text
    assert "req/s gateway / raw unary" in text and "p50 gateway / raw unary" in text


# --- The raw unary driver: the gateway's RPC from the client's GAPIC layer ---------------------


async def test_the_unary_driver_reads_the_one_order_as_the_documented_stream_does(
    demo_database: str,
) -> None:
    database = await driver.open_database(demo_database)
    try:
        unary = await driver.unary_reader(database)
        stream = await driver.async_reader(database)
        for tenant in ("t1", "t2"):  # O-1001 is in both, with other values (dev/seed.sql)
            rows = await unary(tenant)
            assert len(rows) == 1 and rows[0][0] == ORDER_ID, (tenant, rows)
            assert rows == await stream(tenant)  # every column decoded as the library does
        assert await unary("t-none") == []  # the tenant is bound: another tenant, no row
    finally:
        await database.close()


def test_the_unary_driver_refuses_to_run_when_its_read_is_not_the_one_order(
    demo_database: str,
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.e2e.driver", "--mode", "unary", "--host", demo_database,
         "--conc", "1", "--seconds", "1", "--tenants", "t-none"],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode != 0 and "READY" not in run.stdout, run.stdout + run.stderr
    assert f"the point read returned [], not the one order {ORDER_ID}" in run.stderr


def test_without_wrk_it_says_how_to_install_it_and_stops(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--quick", "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(empty)},
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "apt-get install wrk" in run.stderr
    assert not (tmp_path / "out").exists()


# --- The foreign-CPU guard and the aggregation, on plain values --------------------------------


def test_proc_lines_are_read_field_by_field() -> None:
    machine = cpu.parse_machine("cpu  100 5 40 800 20 3 2 10 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert machine == cpu.MachineTicks(busy=100 + 5 + 40 + 3 + 2 + 10, total=160 + 800 + 20)
    # A command name may hold spaces and parentheses: fields are counted from its last ")".
    line = "42 (a) b (c) S 7 42 42 0 -1 4194304 10 0 0 0 1500 250 0 0 20 0 9 0 100 1 1"
    assert cpu.parse_process(line) == (7, 1750)
    with pytest.raises(ValueError):
        cpu.parse_machine("intr 1 2 3\n")


def test_foreign_cpu_is_the_busy_time_that_was_not_ours_as_a_share_of_the_machine() -> None:
    # 2 cores for 10 s at 100 ticks a second: 2,000 ticks. Busy 1,500, ours 1,300: 10 %.
    assert cpu.foreign_share(1500, 1300, 10.0, 2, 100) == pytest.approx(0.10)
    assert cpu.foreign_share(1200, 1300, 10.0, 2, 100) == 0.0  # never below nothing
    assert cpu.too_busy(0.11, 0.10) and not cpu.too_busy(0.10, 0.10)
    assert not cpu.too_busy(0.99, 1.0)  # 1: the check is off


def _phase(target: str, per_second: float, *, refused: bool = False, round_: int = 1) -> Phase:
    return Phase(
        round=round_, target=target, conc=8, requests=int(per_second * 10), per_second=per_second,
        p50_ms=1000 * 8 / per_second, p99_ms=50.0, wall_s=10.0,
        cpu_ms={"server": None, "emulator": 1.0, "driver": 1.0}, foreign=0.5 if refused else 0.01,
        refused=refused,
    )  # fmt: skip


def test_refused_phases_stay_out_of_the_cells_and_the_ratios(tmp_path: Path) -> None:
    options = Options(
        seconds=10, warmup=2, conc=[8], rounds=2, targets=list(TARGETS), max_foreign=0.1,
        out=tmp_path, quick=False,
    )  # fmt: skip
    phases = [
        _phase("raw-sync", 500), _phase("raw-sync", 600, round_=2),
        _phase("raw-async", 700), _phase("raw-async", 9999, refused=True, round_=2),
        _phase("raw-unary", 400), _phase("raw-unary", 500, round_=2),
        _phase("gateway", 450), _phase("gateway", 9999, refused=True, round_=2),
        _phase("fastapi", 1, refused=True), _phase("fastapi", 1, refused=True, round_=2),
    ]  # fmt: skip
    cells = {c.target: c for c in report.aggregate(options, phases)}
    assert cells["raw-sync"].per_second == 550 and cells["raw-sync"].rounds == [500, 600]
    assert cells["raw-async"].per_second == 700 and cells["raw-async"].rounds == [700]
    assert cells["raw-async"].refused == 1
    assert cells["fastapi"].per_second is None and cells["fastapi"].refused == 2
    (ratios,) = report.ratios(list(cells.values()))
    assert ratios["throughput gateway/raw-sync"] == pytest.approx(450 / 550)
    assert ratios["throughput gateway/raw-async"] == pytest.approx(450 / 700)
    assert ratios["throughput gateway/raw-unary"] == pytest.approx(450 / 450)  # the median
    assert ratios["p50 gateway/raw-unary"] == pytest.approx((8000 / 450) / ((20 + 16) / 2))
    assert ratios["throughput gateway/fastapi"] is None  # refused: no ratio, not a made-up one
    text = report.markdown(
        {"when": "now", "machine": report.machine(), "refused": 3,
         "versions": dict.fromkeys(
             ("python", "google-cloud-spanner", "grpcio", "emulator", "wrk", "fastapi",
              "uvicorn", "pyjwt", "spangate"), "v"),
         "options": {"quick": False, "rounds": 2, "seconds": 10, "warmup": 2, "max_foreign": 0.1,
                     "gateway_env": {}},
         "phases": [vars(p) for p in phases], "ratios": [ratios]},
        list(cells.values()), "chart.png",
    )  # fmt: skip
    assert "**Not a result: 3 of 10 phases were refused.**" in text
    assert "| hand-written FastAPI | 8 | refused | 2 refused |" in text
    assert "| raw AsyncClient | 8 | 700 | 700, 1 refused |" in text
    assert "| raw unary ExecuteSql | 8 | 450 | 400, 500 |" in text
    assert "9,999" not in text  # a refused phase's numbers are not reported


# --- --baseline: another checkout's gateway, measured in the same rounds ----------------------


def test_a_baseline_run_measures_both_gateways_and_compares_them(tmp_path: Path) -> None:
    """This checkout as its own baseline: both gateways serve, the comparison is written, and
    a run with a baseline is never published as latest."""
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--quick", "--conc", "1", "--targets", "gateway",
         "--baseline", str(REPO), "--max-foreign", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (data,) = out.glob("*.json")
    result = json.loads(data.read_text())
    assert [p["target"] for p in result["phases"]] == ["gateway", "baseline"]
    assert all(p["requests"] > 0 and p["cpu_ms"]["server"] for p in result["phases"])
    (ratios,) = result["ratios"]
    for key in ("throughput", "p50", "p99", "server cpu"):
        value = ratios[f"{key} gateway/baseline"]
        assert value is not None and math.isfinite(value) and value > 0, key
    assert result["versions"]["baseline"] == result["versions"]["spangate"]
    text = data.with_suffix(".md").read_text()
    assert "## Against the baseline" in text and f"Baseline: the gateway of {REPO}" in text
    assert "| p99 gateway / baseline |" in text
    assert not (out / "latest.md").exists()


def test_baseline_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = parse(["--baseline", str(REPO), "--targets", "raw-unary,gateway"])
    assert options.targets == ["raw-unary", "gateway", "baseline"] and options.baseline == REPO
    assert parse([]).baseline is None and "baseline" not in parse([]).targets
    with pytest.raises(SystemExit):
        parse(["--baseline", str(tmp_path)])  # not a checkout of spangate
    assert "is not a checkout of spangate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--baseline", str(REPO), "--targets", "raw-unary"])
    assert "keep gateway in --targets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--targets", "baseline"])  # only with --baseline PATH


def test_the_baseline_ratios_divide_the_gateway_by_the_baseline(tmp_path: Path) -> None:
    options = Options(
        seconds=10, warmup=2, conc=[8], rounds=1, targets=["gateway", "baseline"],
        max_foreign=0.1, out=tmp_path, quick=False, baseline=REPO,
    )  # fmt: skip
    mine, theirs = _phase("gateway", 500), _phase("baseline", 400)
    mine.cpu_ms["server"], theirs.cpu_ms["server"] = 1.2, 1.5
    mine.p99_ms = 40.0
    (ratios,) = report.ratios(report.aggregate(options, [mine, theirs]))
    assert ratios["throughput gateway/baseline"] == pytest.approx(500 / 400)
    assert ratios["p50 gateway/baseline"] == pytest.approx(400 / 500)
    assert ratios["p99 gateway/baseline"] == pytest.approx(40 / 50)
    assert ratios["server cpu gateway/baseline"] == pytest.approx(1.2 / 1.5)
    (unmeasured,) = report.ratios(report.aggregate(options, [mine]))
    assert unmeasured["server cpu gateway/baseline"] is None  # refused or missing: no ratio
    options.targets, options.baseline = ["gateway"], None
    (plain,) = report.ratios(report.aggregate(options, [mine]))
    assert "server cpu gateway/baseline" not in plain  # no baseline: no such column


def test_the_baseline_gateway_imports_the_baseline_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline's process finds the other checkout's ``gateway`` first, however it is started
    (the console script, or ``python -m gateway`` whose working directory comes first)."""
    from bench.e2e import stack

    other = tmp_path / "other"
    (other / "gateway").mkdir(parents=True)
    (other / "gateway" / "__init__.py").write_text("WHO = 'other'\n")
    (other / "gateway" / "__main__.py").write_text("print('other main')\n")
    seen: dict[str, object] = {}

    def serve(name: str, argv: list[str], env: dict[str, str], *args: object, cwd: Path) -> None:
        seen.update(argv=argv, env=env, cwd=cwd)

    monkeypatch.setattr(stack, "_serve", serve)
    stack.gateway(tmp_path, emulator_host="h", issuer="i", policy=tmp_path / "p", env={}, code=other)
    env, cwd = seen["env"], seen["cwd"]
    assert isinstance(env, dict) and cwd == other and env["PYTHONPATH"] == str(other)
    for how in (["-c", "import gateway; print(gateway.WHO)"], ["-m", "gateway"]):
        done = subprocess.run(
            [sys.executable, *how], cwd=cwd, capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": env["PYTHONPATH"]},
        )  # fmt: skip
        assert done.stdout.strip() == ("other" if how[0] == "-c" else "other main"), done.stderr
    stack.gateway(tmp_path, emulator_host="h", issuer="i", policy=tmp_path / "p", env={})
    assert seen["cwd"] == REPO and "PYTHONPATH" not in seen["env"]  # type: ignore[operator]
