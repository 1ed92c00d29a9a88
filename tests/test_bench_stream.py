"""The streaming-latency benchmark: its arrivals, its figures, and its JSON interface."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from bench.stream import add_ratios, poisson_offsets, summarize, targets
from tests.conftest import PG_ADMIN

ROOT = Path(__file__).resolve().parent.parent


def test_poisson_arrivals_come_at_the_rate_asked_and_are_reproducible() -> None:
    offsets = poisson_offsets(50.0, 200.0, seed=3)
    assert offsets == poisson_offsets(50.0, 200.0, seed=3)
    assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] < 200.0
    assert abs(len(offsets) / 200.0 - 50.0) < 2.0
    gaps = [b - a for a, b in pairwise(offsets)]
    # Exponential gaps: the standard deviation is the mean.
    assert abs(statistics.stdev(gaps) / statistics.mean(gaps) - 1.0) < 0.05


def test_kept_and_escalated_documents_are_timed_apart_from_their_push() -> None:
    pushed = {f"d{i}": 100.0 + i for i in range(4)}
    rows = [
        ("d0", "classified", "slm", 100.2),
        ("d1", "classified", "slm", 101.4),
        ("d2", "classified", "frontier", 103.0),
        ("d3", "frontier_failed", None, 104.0),
    ]
    line = summarize(rows, pushed, start=100.0)
    assert line["docs"] == 4 and line["failed"] == 1
    assert line["docs_per_s"] == 1.0  # four settled over the four seconds from the start
    assert line["kept"]["n"] == 2 and line["kept"]["p50_ms"] == pytest.approx(300.0)
    assert line["escalated"] == {"n": 1, "p50_ms": 1000.0, "p95_ms": 1000.0, "p99_ms": 1000.0}


def test_ratios_and_targets_come_from_lines_of_the_same_run() -> None:
    def line(model: str, rate: float, p50: float, p95: float) -> dict[str, object]:
        kept = {"n": 10, "p50_ms": p50, "p95_ms": p95, "p99_ms": p95}
        return {"model": model, "docs_per_s": rate, "kept": kept}

    lines = {
        "capacity": line("demo", 10.0, 900.0, 2000.0),
        "idle_1_per_s": line("demo", 1.0, 150.0, 200.0),
        "load_50": line("demo", 5.0, 250.0, 900.0),
        "tiny_capacity": line("tiny", 1000.0, 900.0, 2000.0),
        "tiny_load_50": line("tiny", 500.0, 50.0, 100.0),
    }
    add_ratios(lines)
    assert lines["load_50"]["x_capacity"] == 0.5 and lines["load_50"]["p95_x_idle"] == 4.5
    assert lines["tiny_load_50"]["x_capacity"] == 0.5
    assert targets(lines, linger_ms=20.0) == [
        ("demo 50 % load, kept p50", 250.0, 300.0),
        ("demo 50 % load, kept p95", 900.0, 800.0),
        ("demo 1 doc/s, kept p95", 200.0, 320.0),
        ("tiny 50 % load, p95", 100.0, 250.0),
    ]


@pytest.mark.slow
def test_the_tiny_lines_print_one_json_object() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHIFTDOWN_") or k.startswith(("SHIFTDOWN_TEST_", "SHIFTDOWN_BENCH_"))
    }
    env["SHIFTDOWN_TEST_PG"] = PG_ADMIN
    result = subprocess.run(
        [sys.executable, "-m", "bench.stream", "--no-demo", "--tiny-burst", "300",
         "--seconds", "2", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    capacity, load = out["lines"]["tiny_capacity"], out["lines"]["tiny_load_50"]
    assert capacity["docs"] == 300 and capacity["kept"]["n"] == 300
    assert load["offered_per_s"] == pytest.approx(capacity["docs_per_s"] / 2, rel=0.01)
    assert load["kept"]["n"] == load["docs"] > 0 and load["failed"] == 0
    assert load["kept"]["p50_ms"] <= load["kept"]["p95_ms"] <= load["kept"]["p99_ms"]
    assert [t["what"] for t in out["targets"]] == ["tiny 50 % load, p95"]
