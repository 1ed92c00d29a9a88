"""The ranking signals of one forward pass, judged by risk-coverage (models/ranking.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.ranking import compare_signals, kept_accuracy_at, risk_coverage_area


def test_a_perfect_ranking_has_the_least_area_and_keeps_only_right_answers() -> None:
    correct = np.array([True] * 90 + [False] * 10)
    perfect = np.where(correct, 1.0, 0.0) + np.linspace(0, 0.01, 100)
    backwards = -perfect
    assert risk_coverage_area(perfect, correct) < risk_coverage_area(backwards, correct)
    assert kept_accuracy_at(perfect, correct, 0.9) == 1.0
    assert kept_accuracy_at(backwards, correct, 0.9) == 80 / 90
    # A threshold cannot split a tie: a constant score keeps the base rate, in expectation.
    flat = np.zeros(100)
    assert kept_accuracy_at(flat, correct, 0.9) == pytest.approx(0.9)
    assert risk_coverage_area(flat, correct) == pytest.approx(0.1)


def test_the_margin_wins_where_the_runner_up_carries_the_doubt() -> None:
    # Wrong answers have a strong runner-up; right ones a flat tail: the top probability
    # cannot see the difference the margin sees.
    rng = np.random.default_rng(3)
    n, width = 4000, 10
    gold = rng.integers(0, width, size=n)
    logits = rng.normal(scale=0.3, size=(n, width))
    wrong = rng.random(n) < 0.2
    top = np.where(wrong, (gold + 1) % width, gold)
    logits[np.arange(n), top] += 3.0
    logits[np.arange(n)[wrong], gold[wrong]] += 2.9  # the runner-up is the true label
    figures = compare_signals(logits, gold)
    assert figures["margin"]["aurc"] < figures["top_probability"]["aurc"]
