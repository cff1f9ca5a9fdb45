"""``python -m bench e2e``: run the phases, print each, and write the results (``report``).

A phase is one target at one concurrency in one round, on a fresh emulator: start the emulator
and the target, check its answers, warm it up, then measure ``--seconds`` of closed-loop load
between two CPU samples (``cpu.CpuMeter``). Rounds run the targets in turn at each concurrency,
in the opposite order every other round, so that a drift of the machine touches all of them.
A phase whose foreign CPU (the machine busy with anything but the measured processes) is over
``--max-foreign`` is refused: printed, kept in the JSON, left out of the table and the ratios.

``--baseline PATH`` adds a target: the gateway of another checkout of spangate (its ``gateway``
package first on ``PYTHONPATH``, this environment's packages otherwise), measured in the same
rounds as this one, for an A/B of a change: the server CPU of one build varies by about ±5-10 %
from run to run on a shared machine, more than most single changes save, while phases run
side by side in alternating order drift together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.e2e import stack
from bench.e2e.cpu import CpuMeter, CpuUsage, too_busy
from bench.e2e.workload import REPO
from bench.e2e.wrk import WrkError, WrkMissing, find_wrk, run_wrk

__all__ = ["LABELS", "TARGETS", "Options", "Phase", "main"]

TARGETS = ("raw-sync", "raw-async", "raw-unary", "gateway", "fastapi")
LABELS = {
    "raw-sync": "raw client, threads",
    "raw-async": "raw AsyncClient",
    "raw-unary": "raw unary ExecuteSql",
    "gateway": "spangate gateway",
    "fastapi": "hand-written FastAPI",
    "baseline": "spangate baseline",  # --baseline PATH: another checkout's gateway
}
ROLES = ("server", "emulator", "driver")
EXIT_REFUSED = 3  # some phase was refused: nothing published as latest


@dataclass
class Options:
    seconds: int
    warmup: int
    conc: list[int]
    rounds: int
    targets: list[str]
    max_foreign: float
    out: Path
    quick: bool
    gateway_env: dict[str, str] = field(default_factory=dict)
    baseline: Path | None = None  # another checkout of spangate: the "baseline" target


@dataclass
class Phase:
    round: int
    target: str
    conc: int
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    wall_s: float
    cpu_ms: dict[str, float | None]  # CPU per request by role: server, emulator, driver
    foreign: float  # share of the machine's capacity spent by others
    refused: bool

    def line(self, limit: float) -> str:
        where = f"  round {self.round}  x{self.conc:<3} {self.target:<9}"
        if self.refused:
            return (
                f"{where}  REFUSED: the machine was busy (foreign CPU {self.foreign:.1%}, "
                f"over {limit:.0%})"
            )
        cpu = "  ".join(
            f"{role} {value:.3f}" for role, value in self.cpu_ms.items() if value is not None
        )
        return (
            f"{where} {self.per_second:9,.1f} req/s  p50 {self.p50_ms:7.2f} ms"
            f"  p99 {self.p99_ms:7.2f} ms  CPU ms/req: {cpu}  foreign {self.foreign:.1%}"
        )


def _phase(
    options: Options, folder: Path, *, target: str, conc: int, round_: int,
    issuer: str, callers: list[stack.Caller], tokens: Path, policy: Path,
) -> Phase:  # fmt: skip
    emulator = stack.fresh_database(folder, policy)
    server: stack.Server | None = None
    driver: stack.Driver | None = None
    try:
        if target.startswith("raw-"):
            driver = stack.start_driver(
                folder, mode=target.removeprefix("raw-"), emulator_host=emulator.host,
                conc=conc, seconds=options.seconds, warmup=options.warmup,
                tenants=[c.tenant for c in callers],
            )  # fmt: skip
            meter = CpuMeter({"emulator": [emulator.pid], "driver": [driver.pid]}, [os.getpid()])
            meter.start()
            result = driver.run(options.seconds)
            usage = meter.stop()
            if result["errors"]:
                raise stack.StackError(f"{target}: {result['errors']} reads failed")
            requests, wall = int(result["requests"]), float(result["wall_s"])
            p50, p99 = float(result["p50_ms"]), float(result["p99_ms"])
        else:
            if target in ("gateway", "baseline"):
                server = stack.gateway(
                    folder, emulator_host=emulator.host, issuer=issuer, policy=policy,
                    env=options.gateway_env,
                    code=options.baseline if target == "baseline" else None,
                )  # fmt: skip
            else:
                server = stack.handwritten(folder, emulator_host=emulator.host, issuer=issuer)
            server.check(callers)
            if options.warmup > 0:
                run_wrk(server.url, conc=conc, seconds=options.warmup, tokens_file=tokens)
            meter = CpuMeter({"server": [server.pid], "emulator": [emulator.pid]}, [os.getpid()])
            meter.start()
            measured = run_wrk(server.url, conc=conc, seconds=options.seconds, tokens_file=tokens)
            usage = meter.stop(exited={"driver": measured.cpu_s})
            requests, wall = measured.requests, measured.duration_s
            p50, p99 = measured.p50_ms, measured.p99_ms
    finally:
        for process in (driver, server, emulator):
            if process is not None:
                process.stop()
    return _result(options, target, conc, round_, requests, wall, p50, p99, usage)


def _result(
    options: Options, target: str, conc: int, round_: int, requests: int, wall: float,
    p50: float, p99: float, usage: CpuUsage,
) -> Phase:  # fmt: skip
    return Phase(
        round=round_,
        target=target,
        conc=conc,
        requests=requests,
        per_second=requests / wall if wall > 0 else 0.0,
        p50_ms=p50,
        p99_ms=p99,
        wall_s=wall,
        cpu_ms={role: usage.per_request_ms(role, requests) for role in ROLES},
        foreign=usage.foreign,
        refused=too_busy(usage.foreign, options.max_foreign),
    )


def schedule(options: Options) -> list[tuple[int, int, str]]:
    """(round, concurrency, target) in the order they run."""
    order: list[tuple[int, int, str]] = []
    for round_ in range(1, options.rounds + 1):
        targets = options.targets if round_ % 2 else list(reversed(options.targets))
        order += [(round_, conc, target) for conc in options.conc for target in targets]
    return order


def run(options: Options) -> list[Phase]:
    from bench.policy import example_policy

    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="spangate-bench-e2e-") as tmp:
        folder = Path(tmp)
        policy = example_policy(folder)  # without budgets: the budgets suite measures them
        with stack.identity_provider(folder) as idp:
            for n, (round_, conc, target) in enumerate(schedule(options), 1):
                here = folder / f"phase-{n}"
                here.mkdir()
                callers = stack.callers(idp.issuer)
                tokens = here / "tokens.txt"
                tokens.write_text("".join(f"{c.token}\n" for c in callers))
                phase = _phase(
                    options, here, target=target, conc=conc, round_=round_, issuer=idp.issuer,
                    callers=callers, tokens=tokens, policy=policy,
                )  # fmt: skip
                shutil.rmtree(here, ignore_errors=True)  # audit trails and logs: MBs a phase
                print(phase.line(options.max_foreign), flush=True)
                phases.append(phase)
    return phases


def _conc(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _targets(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = set(values) - set(TARGETS)
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"targets among {', '.join(TARGETS)}")
    return values


def _checkout(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "gateway" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a checkout of spangate (no gateway/)")
    return path


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("NAME=VALUE")
    return name, value


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench e2e",
        description="End to end, side by side: the raw Spanner client (threads, AsyncClient, its "
        "GAPIC client's unary ExecuteSql), the gateway and a hand-written FastAPI service, the "
        "same point read (docs/performance.md).",
    )
    parser.add_argument("--seconds", type=int, help="length of a measured phase (default 10)")
    parser.add_argument("--warmup", type=int, help="warm-up before each phase, s (default 2)")
    parser.add_argument("--conc", type=_conc, help="concurrencies (default 1,8,32)")
    parser.add_argument("--rounds", type=int, help="rounds of every phase (default 2)")
    parser.add_argument(
        "--targets", type=_targets, default=list(TARGETS),
        help=f"comma-separated, among {', '.join(TARGETS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--max-foreign", type=float, default=0.10,
        help="refuse a phase when processes other than the measured ones used more than this "
        "share of the machine's CPU (default 0.10; 1 turns the check off)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: 1 s phases, no warm-up, 1 round, conc 1,8, results to build/bench-e2e "
        "and never published as latest",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", type=_checkout, metavar="PATH",
        help="another checkout of spangate (e.g. `git worktree add /tmp/base main`): its gateway "
        "is measured too, in the same rounds, and compared (an A/B of a change; never published "
        "as latest)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-env", type=_setting, action="append", default=[], metavar="NAME=VALUE",
        help="a setting for the gateway (e.g. SPANGATE_LOG_LEVEL=warning); repeatable",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    options = Options(
        seconds=args.seconds or (1 if quick else 10),
        warmup=args.warmup if args.warmup is not None else (0 if quick else 2),
        conc=args.conc or ([1, 8] if quick else [1, 8, 32]),
        rounds=args.rounds or (1 if quick else 2),
        targets=args.targets,
        max_foreign=args.max_foreign,
        out=args.out or (REPO / "build" / "bench-e2e" if quick else REPO / "bench" / "results"),
        quick=quick,
        gateway_env=dict(args.gateway_env),
        baseline=args.baseline,
    )
    if options.baseline is not None and "baseline" not in options.targets:
        options.targets.append("baseline")
    if options.baseline is not None and "gateway" not in options.targets:
        parser.error("--baseline compares against the gateway: keep gateway in --targets")
    if options.seconds < 1 or options.rounds < 1 or options.warmup < 0:
        parser.error("--seconds and --rounds must be at least 1, --warmup at least 0")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    from bench.e2e import report

    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        find_wrk()
    except WrkMissing as missing:
        print(f"bench e2e: {missing}", file=sys.stderr)
        return 2
    print(
        f"End to end: {', '.join(options.targets)} at conc {options.conc}, {options.rounds} "
        f"round(s) of {options.seconds} s phases (warm-up {options.warmup} s), a fresh emulator "
        f"each; phases with foreign CPU over {options.max_foreign:.0%} are refused.",
        flush=True,
    )
    try:
        phases = run(options)
    except (stack.StackError, WrkError) as failed:
        print(f"bench e2e: {failed}", file=sys.stderr)
        return 1
    written = report.write(options, phases)
    refused = sum(p.refused for p in phases)
    for path in written.files:
        print(f"  wrote {path}")
    if refused:
        print(
            f"bench e2e: {refused} of {len(phases)} phases refused: the machine was busy with "
            f"something else (foreign CPU over {options.max_foreign:.0%}). Not a result: "
            "run again on a quiet machine.",
            file=sys.stderr,
        )
    elif written.published:
        print(f"  published as {options.out / 'latest.md'}")
    # A smoke run only checks that everything works: its numbers are never a result anyway.
    return EXIT_REFUSED if refused and not options.quick else 0
