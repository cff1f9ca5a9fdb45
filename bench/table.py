"""A benchmark result table: rows of (name, operations per second, p50, p99), with ratios."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

__all__ = ["Row", "Table", "percentile"]


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Row:
    name: str
    ops_per_second: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""

    @classmethod
    def from_latencies(
        cls, name: str, latencies_s: list[float], wall_s: float, note: str = ""
    ) -> Row:
        return cls(
            name,
            len(latencies_s) / wall_s if wall_s > 0 else float("nan"),
            percentile(latencies_s, 50) * 1000,
            percentile(latencies_s, 99) * 1000,
            note,
        )


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)
    unit: str = "ops/s"
    notes: list[str] = field(default_factory=list)  # lines printed under the rows

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def render(self) -> str:
        if not self.rows:
            return f"{self.title}\n  (no rows)"
        base = self.rows[0].ops_per_second
        width = max(len(r.name) for r in self.rows)
        lines = [
            self.title,
            f"  {'':{width}}  {self.unit:>12}  {'ratio':>7}  {'p50 ms':>8}  {'p99 ms':>8}",
        ]
        for r in self.rows:
            ratio = r.ops_per_second / base if base else float("nan")
            p50 = f"{r.p50_ms:8.3f}" if r.p50_ms is not None else f"{'':8}"
            p99 = f"{r.p99_ms:8.3f}" if r.p99_ms is not None else f"{'':8}"
            lines.append(
                f"  {r.name:{width}}  {r.ops_per_second:12,.0f}  {ratio:6.2f}x  {p50}  {p99}  {r.note}"
            )
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
