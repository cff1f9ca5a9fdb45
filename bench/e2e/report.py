"""The results of a run: a Markdown table, the JSON of every phase and a chart (PNG and SVG),
with the machine and the versions they were measured on.

Files (``--out``, default ``bench/results/``): ``<stamp>.md``, ``.json``, ``.png``, ``.svg``
(``stamp``: the run's UTC start, ``YYYY-MM-DD-HHMMSS``), and ``latest.md``/``.png``/``.svg``
as copies of a run that is fit to publish: not ``--quick``, and no phase refused.

A cell (a target at a concurrency) is the median of its accepted rounds; a ratio divides the
gateway's cell by another target's at the same concurrency. ``gateway / raw unary`` is the
like-for-like one (both send this read as one unary ExecuteSql); the ratios to the streaming raw
targets and to the hand-written service stay for comparison. With ``--baseline``, the gateway's
throughput, p50 and server CPU over the baseline's (another checkout's gateway) too; such a run
compares two builds and is never published as latest.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.e2e import wrk
from bench.e2e.suite import LABELS, ROLES, Options, Phase
from bench.e2e.workload import REPO, ROWS

__all__ = ["Cell", "Written", "aggregate", "machine", "markdown", "ratios", "versions", "write"]

# The targets the gateway is divided by, like-for-like first (the same unary RPC)
PAIRS = (
    ("raw-unary", "raw unary"),
    ("raw-sync", "raw sync"),
    ("raw-async", "raw async"),
    ("fastapi", "FastAPI"),
)
BASELINE = ("baseline", "baseline")  # --baseline: also the server's CPU


@dataclass
class Cell:
    target: str
    conc: int
    rounds: list[float]  # req/s of every accepted round
    refused: int  # rounds refused (the machine was busy): not reported
    per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_ms: dict[str, float | None] = field(default_factory=dict)
    foreign: float | None = None  # the highest of its accepted rounds


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def aggregate(options: Options, phases: Sequence[Phase]) -> list[Cell]:
    cells = []
    for target in options.targets:
        for conc in options.conc:
            mine = [p for p in phases if p.target == target and p.conc == conc]
            ok = [p for p in mine if not p.refused]
            cell = Cell(target, conc, [p.per_second for p in ok], len(mine) - len(ok))
            if ok:
                cell.per_second = _median([p.per_second for p in ok])
                cell.p50_ms = _median([p.p50_ms for p in ok])
                cell.p99_ms = _median([p.p99_ms for p in ok])
                cell.cpu_ms = {role: _median([p.cpu_ms.get(role) for p in ok]) for role in ROLES}
                cell.foreign = max(p.foreign for p in ok)
            cells.append(cell)
    return cells


# What a checkout's gateway is compared on against the baseline's (besides its server CPU).
BASELINE_METRICS = (("throughput", "per_second"), ("p50", "p50_ms"), ("p99", "p99_ms"))


def ratios(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Per concurrency: the gateway's throughput and p50 over each other target's, and with a
    baseline its throughput, p50, p99 and server CPU over the baseline's (None where a side is
    missing or refused)."""
    by = {(c.target, c.conc): c for c in cells}
    rows = []
    for conc in sorted({c.conc for c in cells}):
        gateway = by.get(("gateway", conc))
        row: dict[str, Any] = {"conc": conc}
        for other, _ in PAIRS:
            theirs = by.get((other, conc))
            for metric, attribute in (("throughput", "per_second"), ("p50", "p50_ms")):
                mine = getattr(gateway, attribute, None)
                base = getattr(theirs, attribute, None)
                row[f"{metric} gateway/{other}"] = mine / base if mine and base else None
        baseline = by.get(("baseline", conc))
        if baseline is not None:
            for metric, attribute in BASELINE_METRICS:
                mine, base = getattr(gateway, attribute, None), getattr(baseline, attribute)
                row[f"{metric} gateway/baseline"] = mine / base if mine and base else None
            mine = gateway.cpu_ms.get("server") if gateway is not None else None
            base = baseline.cpu_ms.get("server")
            row["server cpu gateway/baseline"] = mine / base if mine and base else None
        rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
    }


def _emulator_version() -> str:
    """The emulator's version from the Cloud SDK's component snapshot next to it."""
    from gateway.dev.emulator import find_emulator

    try:
        sdk = find_emulator().resolve().parents[2]
        for snapshot in sorted((sdk / ".install").glob("cloud-spanner-emulator*.snapshot.json")):
            for component in json.loads(snapshot.read_text()).get("components", []):
                version = component.get("version", {}).get("version_string")
                if version:
                    return str(version)
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _git(where: Path = REPO) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    sha = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def versions(baseline: Path | None = None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("google-cloud-spanner", "grpcio", "fastapi", "uvicorn", "pyjwt"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    found["emulator"] = _emulator_version()
    found["wrk"] = wrk.version()
    found["spangate"] = _git()
    if baseline is not None:
        found["baseline"] = _git(baseline)
    return found


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(run: dict[str, Any], cells: Sequence[Cell], chart: str) -> str:
    options, refused = run["options"], run["refused"]
    m, v = run["machine"], run["versions"]
    lines = [f"# spangate end to end, {run['when']}", ""]
    if refused or options["quick"]:
        why = [f"{refused} of {len(run['phases'])} phases were refused"] if refused else []
        why += ["a --quick smoke run"] if options["quick"] else []
        lines += [f"**Not a result: {', '.join(why)}.**", ""]
    lines += [
        f"Measured on {m['cores']} cores ({m['cpu']}), {m['kernel']}; Python {v['python']}, "
        f"google-cloud-spanner {v['google-cloud-spanner']}, grpcio {v['grpcio']}, Cloud Spanner "
        f"emulator {v['emulator']}, {v['wrk']}, FastAPI {v['fastapi']}, uvicorn {v['uvicorn']}, "
        f"pyjwt {v['pyjwt']}; spangate {v['spangate']}.",
        "",
        f"The same point read (the example policy's `get_order`, one row of {ROWS}), "
        f"{options['rounds']} round(s) of {options['seconds']} s phases after "
        f"{options['warmup']} s of warm-up, a fresh emulator per phase; a cell is the median of "
        f"its rounds. A phase is refused when other processes used more than "
        f"{options['max_foreign']:.0%} of the machine's CPU. How it is measured: "
        "docs/performance.md.",
    ]
    if options.get("baseline"):
        lines += [
            "",
            f"Baseline: the gateway of {options['baseline']} (spangate {v.get('baseline')}), "
            "measured in the same rounds.",
        ]
    if options["gateway_env"]:
        settings = ", ".join(f"`{k}={val}`" for k, val in options["gateway_env"].items())
        lines += ["", f"Gateway settings: {settings}."]
    lines += ["", f"![Throughput and p99 latency against concurrency]({chart})", ""]
    lines += [
        "## Throughput and latency",
        "",
        "| target | conc | req/s | rounds, req/s | p50 ms | p99 ms | CPU ms/req: server "
        "| emulator | driver | foreign CPU |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        rounds = ", ".join(
            [f"{r:,.0f}" for r in c.rounds] + [f"{c.refused} refused"] * bool(c.refused)
        )
        req = _num(c.per_second, ",.0f") if c.rounds else "refused"
        lines.append(
            f"| {LABELS[c.target]} | {c.conc} | {req} | {rounds} | {_num(c.p50_ms, '.2f')} "
            f"| {_num(c.p99_ms, '.2f')} | {_num(c.cpu_ms.get('server'), '.3f')} "
            f"| {_num(c.cpu_ms.get('emulator'), '.3f')} | {_num(c.cpu_ms.get('driver'), '.3f')} "
            f"| {_num(c.foreign, '.1%')} |"
        )
    lines += [
        "",
        "## Ratios",
        "",
        "The gateway's throughput over the other target's (higher is better for the gateway), "
        "and its p50 latency over theirs (lower is better). Like for like: gateway / raw unary "
        "(both send this read as one unary ExecuteSql); the raw sync and raw async targets "
        "stream it (the client's execute_sql), for comparison.",
        "",
        "| conc | " + " | ".join(f"req/s gateway / {label}" for _, label in PAIRS)
        + " | " + " | ".join(f"p50 gateway / {label}" for _, label in PAIRS) + " |",
        "|---:|" + "---:|" * (2 * len(PAIRS)),
    ]  # fmt: skip
    for row in run["ratios"]:
        values = [row[f"throughput gateway/{o}"] for o, _ in PAIRS]
        values += [row[f"p50 gateway/{o}"] for o, _ in PAIRS]
        lines.append(f"| {row['conc']} | " + " | ".join(_num(x, ".2f") for x in values) + " |")
    if any("throughput gateway/baseline" in row for row in run["ratios"]):
        lines += [
            "",
            "## Against the baseline",
            "",
            "This checkout's gateway over the baseline's, in the same rounds: throughput (higher "
            "is better), p50 and p99 latency and server CPU per request (lower is better).",
            "",
            "| conc | req/s gateway / baseline | p50 gateway / baseline | p99 gateway / baseline "
            "| server CPU gateway / baseline |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in run["ratios"]:
            values = [
                row.get(k)
                for k in (
                    "throughput gateway/baseline",
                    "p50 gateway/baseline",
                    "p99 gateway/baseline",
                    "server cpu gateway/baseline",
                )
            ]
            lines.append(
                f"| {row['conc']} | " + " | ".join(_num(x, ".3f") for x in values) + " |"
            )
    lines += [
        "",
        "## Phases",
        "",
        "| round | target | conc | req/s | p50 ms | p99 ms | foreign CPU |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in run["phases"]:
        measured = (
            "refused | | "
            if p["refused"]
            else f"{p['per_second']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f}"
        )
        lines.append(
            f"| {p['round']} | {LABELS[p['target']]} | {p['conc']} | {measured} "
            f"| {p['foreign']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def chart(run: dict[str, Any], cells: Sequence[Cell], png: Path, svg: Path) -> None:
    """Throughput and p99 against concurrency, one line per target (accepted cells only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concs = sorted({c.conc for c in cells})
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target, label in LABELS.items():
        mine = [c for c in cells if c.target == target and c.per_second is not None]
        if not mine:
            continue
        xs = [c.conc for c in mine]
        left.plot(xs, [c.per_second for c in mine], marker="o", label=label)
        right.plot(xs, [c.p99_ms for c in mine], marker="o", label=label)
    for axis, title in ((left, "Throughput, req/s"), (right, "p99 latency, ms")):
        axis.set_title(title)
        axis.set_xlabel("concurrent callers")
        if len(concs) > 1:
            axis.set_xscale("log", base=2)
        axis.set_xticks(concs, [str(c) for c in concs])
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
    if left.lines:
        left.legend(fontsize="small")
    else:
        left.text(0.5, 0.5, "every phase refused", ha="center", transform=left.transAxes)
    m = run["machine"]
    figure.suptitle(
        f"spangate end to end, {run['when']}: {m['cores']} cores, {m['cpu']}"
        + ("  (NOT A RESULT)" if run["refused"] or run["options"]["quick"] else ""),
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    figure.savefig(svg, metadata={"Date": None})
    plt.close(figure)


@dataclass
class Written:
    files: list[Path]
    published: bool


def write(options: Options, phases: Sequence[Phase]) -> Written:
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y-%m-%d-%H%M%S")
    cells = aggregate(options, phases)
    refused = sum(p.refused for p in phases)
    run: dict[str, Any] = {
        "when": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(options.baseline),
        "options": {
            **asdict(options),
            "out": str(options.out),
            "baseline": str(options.baseline) if options.baseline else None,
        },
        "refused": refused,
        "phases": [asdict(p) for p in phases],
        "cells": [asdict(c) for c in cells],
        "ratios": ratios(cells),
    }
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{stamp}.{ext}" for ext in ("md", "json", "png", "svg")]
    files[0].write_text(markdown(run, cells, f"{stamp}.png"), encoding="utf-8")
    files[1].write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    chart(run, cells, files[2], files[3])
    publish = not options.quick and not refused and options.baseline is None
    if publish:
        latest = [out / f"latest.{ext}" for ext in ("md", "png", "svg")]
        latest[0].write_text(markdown(run, cells, "latest.png"), encoding="utf-8")
        latest[1].write_bytes(files[2].read_bytes())
        latest[2].write_bytes(files[3].read_bytes())
        files += latest
    return Written(files, publish)
