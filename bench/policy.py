"""The example policy for benchmarks: its own ``budgets:`` replaced (benchmarks call far more
often than the example's agent budget allows)."""

from __future__ import annotations

from pathlib import Path

from bench.bench_spanner import REPO

__all__ = ["example_policy"]


def example_policy(folder: Path, budgets: str = "") -> Path:
    """``policy.example.yaml`` with ``budgets`` (YAML text, or nothing) instead of its own,
    written to ``folder``."""
    text = (REPO / "policy.example.yaml").read_text()
    start, end = text.index("\nbudgets:"), text.index("\naudit:")
    text = text[:start] + ("\n" + budgets.rstrip() + "\n" if budgets else "\n") + text[end:]
    path = folder / "policy.yaml"
    path.write_text(text)
    return path
