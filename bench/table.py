"""Plain-text tables for the benchmark scripts: the first column left-aligned, the
rest right-aligned, each as wide as its widest cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``header`` and ``rows`` (already formatted cells) as aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def print_lines(
    lines: Mapping[str, Mapping[str, Any]], ratio: str, ratio_name: str, digits: int = 2
) -> None:
    """The throughput benchmarks' table: each line's docs/s, p50 and p95, and its
    ``ratio`` to the baseline line (named ``ratio_name``)."""
    print_table(
        ["line", "docs/s", "p50 ms", "p95 ms", f"x {ratio_name}"],
        [
            [name, f"{x['docs_per_s']:.{digits}f}", f"{x['p50_ms']:.1f}", f"{x['p95_ms']:.1f}",
             f"{x[ratio]:.3f}"]
            for name, x in lines.items()
        ],
    )  # fmt: skip
