"""The benchmarks' documents: BANKING77 test queries from the demo copy."""

from __future__ import annotations

import csv
import random
from pathlib import Path

TEST_CSV = Path(__file__).resolve().parent.parent / "demo" / "banking77" / "test.csv"


def banking_queries(n: int | None = None, seed: int | None = 0) -> list[str]:
    """The 3,080 test queries, shuffled with ``seed`` (None: file order), cycled to
    ``n`` when given."""
    with TEST_CSV.open(newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    if seed is not None:
        random.Random(seed).shuffle(texts)
    return texts if n is None else [texts[i % len(texts)] for i in range(n)]
