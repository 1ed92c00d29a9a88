"""The benchmarks' documents: BANKING77 test queries from the demo copy."""

from __future__ import annotations

import csv
import random
from pathlib import Path

TEST_CSV = Path(__file__).resolve().parent.parent / "demo" / "banking77" / "test.csv"


def banking_labelled(n: int | None = None, seed: int | None = 0) -> list[tuple[str, str]]:
    """The 3,080 test queries with their labels, shuffled with ``seed`` (None: file
    order), cycled to ``n`` when given."""
    with TEST_CSV.open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return rows if n is None else [rows[i % len(rows)] for i in range(n)]


def banking_queries(n: int | None = None, seed: int | None = 0) -> list[str]:
    """The test queries of ``banking_labelled``, without their labels."""
    return [text for text, _ in banking_labelled(n, seed)]
