"""Run every benchmark module of this package and print one table per module.

A benchmark module defines ``run(quick: bool) -> Table``. Tables compare things side by side:
each row's ``ratio`` is its throughput relative to the table's first row (the baseline), so the
numbers mean something on any machine. ``python -m bench [NAME ...] [--quick]``.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args(argv)
    names = args.names or sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
    )
    for name in names:
        module = importlib.import_module(
            f"bench.{name if name.startswith('bench_') else 'bench_' + name}"
        )
        started = time.perf_counter()
        table: Table = module.run(args.quick)
        print(table.render())
        print(f"  ({time.perf_counter() - started:.1f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
