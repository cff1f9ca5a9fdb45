"""Run the benchmarks of this package: the component modules, then the end-to-end suite.

A component module (``bench_*.py``) defines ``run(quick: bool) -> Table``. Tables compare things
side by side: each row's ``ratio`` is its throughput relative to the table's first row (the
baseline), so the numbers mean something on any machine. The end-to-end suite (``bench/e2e/``)
starts its own processes and writes its results under ``bench/results/`` (docs/performance.md).

    python -m bench [NAME ...] [--quick]     # NAME: tokens, decide, ..., e2e (default: all)
    python -m bench e2e [OPTIONS]            # the end-to-end suite alone: --help lists them
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

import bench
from bench.table import Table

__all__ = ["main"]

E2E = "e2e"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [E2E]:
        from bench.e2e.suite import main as e2e

        return e2e(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args(argv)
    names = args.names or [
        *sorted(
            m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
        ),
        E2E,
    ]
    status = 0
    for name in names:
        started = time.perf_counter()
        if name == E2E:
            from bench.e2e.suite import main as e2e

            status = e2e(["--quick"] if args.quick else []) or status
        else:
            module = importlib.import_module(
                f"bench.{name if name.startswith('bench_') else 'bench_' + name}"
            )
            table: Table = module.run(args.quick)
            print(table.render())
        print(f"  ({time.perf_counter() - started:.1f} s)\n", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
