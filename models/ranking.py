"""Which signal of the SLM's one forward pass best ranks documents from surest to least
sure, so that escalating the least sure buys the most accuracy per call.

Three signals from the label distribution: the top label's probability (the policy's
score today), the margin between the top two, and the negative entropy. Each is judged
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


def _top_probability(probs: Floats) -> Floats:
    result: Floats = probs.max(axis=1)
    return result


def _margin(probs: Floats) -> Floats:
    top2 = np.sort(probs, axis=1)[:, -2:]
    result: Floats = top2[:, 1] - top2[:, 0]
    return result


def _negative_entropy(probs: Floats) -> Floats:
    result: Floats = (probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return result


SIGNALS: dict[str, Callable[[Floats], Floats]] = {
    "top_probability": _top_probability,
    "margin": _margin,
    "negative_entropy": _negative_entropy,
}


def risk_coverage_area(score: Floats, correct: npt.NDArray[np.bool_]) -> float:
    """Mean error rate of the kept documents over every coverage 1/n .. 1, keeping the
    highest-scoring first (ties broken against the ranking: the pessimistic order)."""
    order = np.lexsort((correct, -score))  # within a tie, wrong ones first
    errors = np.cumsum(~correct[order])
    kept = np.arange(1, len(order) + 1)
    return float(np.mean(errors / kept)) if len(order) else 0.0


def kept_accuracy_at(score: Floats, correct: npt.NDArray[np.bool_], coverage: float) -> float:
    """Accuracy of the ``coverage`` share of documents the score is surest of."""
    keep = max(1, round(coverage * len(score)))
    order = np.lexsort((correct, -score))[:keep]
    return float(correct[order].mean())


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
        probs = softmax_rows(logits[test], temperature)
        for name, signal in SIGNALS.items():
            score = signal(probs)
            totals[name]["aurc"] += risk_coverage_area(score, correct[test]) / folds
            totals[name]["kept_accuracy_at_90"] += (
                kept_accuracy_at(score, correct[test], 0.9) / folds
            )
    return {
        name: {key: round(value, 6) for key, value in figures.items()}
        for name, figures in totals.items()
    }
