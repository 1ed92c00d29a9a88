"""Which signal of the SLM's one forward pass best ranks documents from surest to least
sure, so that escalating the least sure buys the most accuracy per call.

Four signals: from the label distribution, the top label's probability (the policy's
score today), the margin between the top two and the negative entropy; and the margin
between the top two logits, which does not saturate where probabilities round to 1. Each is judged
by the area under its risk-coverage curve (lower is better: the mean error rate of the
kept documents over every coverage) and by the accuracy of the 90 % it is surest of.
Out of fold: the temperature is fitted on one half and the ranking judged on the other,
since the margin and the entropy (unlike the top probability's order) depend on it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from models.calibration import fit_temperature, softmax_rows

Floats = npt.NDArray[np.float64]


def _top_probability(scaled: Floats) -> Floats:
    result: Floats = softmax_rows(scaled, 1.0).max(axis=1)
    return result


def _margin(scaled: Floats) -> Floats:
    top2 = np.sort(softmax_rows(scaled, 1.0), axis=1)[:, -2:]
    result: Floats = top2[:, 1] - top2[:, 0]
    return result


def _negative_entropy(scaled: Floats) -> Floats:
    probs = softmax_rows(scaled, 1.0)
    result: Floats = (probs * np.log(np.clip(probs, 1e-300, 1.0))).sum(axis=1)
    return result


def _logit_margin(scaled: Floats) -> Floats:
    top2 = np.sort(scaled, axis=1)[:, -2:]
    result: Floats = top2[:, 1] - top2[:, 0]
    return result


# Each takes the logits divided by the temperature.
SIGNALS: dict[str, Callable[[Floats], Floats]] = {
    "top_probability": _top_probability,
    "margin": _margin,
    "negative_entropy": _negative_entropy,
    "logit_margin": _logit_margin,
}


def _expected_errors(score: Floats, correct: npt.NDArray[np.bool_]) -> Floats:
    """Errors among the k highest-scoring documents, k = 1..n, in expectation over the
    order within tied scores (a threshold cannot split a tie)."""
    order = np.argsort(-score, kind="stable")
    s, wrong = score[order], (~correct[order]).astype(np.float64)
    errors = np.cumsum(wrong)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    expected = errors.copy()
    for a, b in zip(starts, ends, strict=True):
        if b - a > 1:
            before = errors[a - 1] if a else 0.0
            in_tie = errors[b - 1] - before
            expected[a:b] = before + in_tie * np.arange(1, b - a + 1) / (b - a)
    return expected


def risk_coverage_area(score: Floats, correct: npt.NDArray[np.bool_]) -> float:
    """Mean error rate of the kept documents over every coverage 1/n .. 1, keeping the
    highest-scoring first (ties in expectation: a threshold cannot split them)."""
    if len(score) == 0:
        return 0.0
    kept = np.arange(1, len(score) + 1)
    return float(np.mean(_expected_errors(score, correct) / kept))


def kept_accuracy_at(score: Floats, correct: npt.NDArray[np.bool_], coverage: float) -> float:
    """Accuracy of the ``coverage`` share of documents the score is surest of (ties in
    expectation)."""
    keep = max(1, round(coverage * len(score)))
    return float(1.0 - _expected_errors(score, correct)[keep - 1] / keep)


def compare_signals(
    logits: Floats, gold: npt.NDArray[np.intp], folds: int = 2, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Each signal's risk-coverage area and kept accuracy at 90 % coverage, out of fold
    (averaged over the folds)."""
    n = len(gold)
    fold = np.random.default_rng(seed).permutation(n) % folds
    correct = logits.argmax(axis=1) == gold
    totals = {name: {"aurc": 0.0, "kept_accuracy_at_90": 0.0} for name in SIGNALS}
    for k in range(folds):
        fit, test = fold != k, fold == k
        temperature = fit_temperature(logits[fit], gold[fit])
        scaled = logits[test] / temperature
        for name, signal in SIGNALS.items():
            score = signal(scaled)
            totals[name]["aurc"] += risk_coverage_area(score, correct[test]) / folds
            totals[name]["kept_accuracy_at_90"] += (
                kept_accuracy_at(score, correct[test], 0.9) / folds
            )
    return {
        name: {key: round(value, 6) for key, value in figures.items()}
        for name, figures in totals.items()
    }
