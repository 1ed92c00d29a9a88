"""Evaluate a model version through the llama.cpp serving path on labelled data:
accuracy, macro-F1, per-label accuracy, confusions, calibration (ECE) and accuracy at
coverage (keep the most confident share, measure accuracy on it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.classifier import Classifier
from models.scores import Scores, score
from shiftdown.charts import COLORS, chart, label_axes, percent_axis, save_png

COVERAGES = (0.5, 0.7, 0.8, 0.9, 0.95)


def expected_calibration_error(
    confidence: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], bins: int = 15
) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def accuracy_at_coverage(
    confidence: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], coverage: float
) -> float:
    """Accuracy on the ``coverage`` share of documents the model is most confident about."""
    keep = max(1, round(len(confidence) * coverage))
    order = np.argsort(-confidence, kind="stable")[:keep]
    return float(correct[order].mean())


def metrics(
    gold: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Every figure of an evaluation from gold labels, predictions and confidences."""
    conf = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray([g == p for g, p in zip(gold, predicted, strict=True)])
    per_label: dict[str, dict[str, float | int]] = {}
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        support = sum(g == label for g in gold)
        predicted_n = sum(p == label for p in predicted)
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if support:
            f1s.append(f1)
            per_label[label] = {
                "accuracy": round(recall, 4),
                "support": support,
                "f1": round(f1, 4),
            }
    confusions = Counter((g, p) for g, p in zip(gold, predicted, strict=True) if g != p)
    return {
        "documents": len(gold),
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "ece": round(expected_calibration_error(conf, correct), 4),
        "accuracy_at_coverage": {
            str(c): round(accuracy_at_coverage(conf, correct, c), 4) for c in COVERAGES
        },
        "per_label": per_label,
        "confused_pairs": [
            {"gold": g, "predicted": p, "count": n} for (g, p), n in confusions.most_common(10)
        ],
    }


def evaluate(
    clf: Classifier,
    examples: Sequence[tuple[str, str]],
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], Scores]:
    """Classify every example with ``clf``; returns metrics and the raw scores.

    ``ece`` is at the model's stored temperature (what workers serve);
    ``ece_uncalibrated`` at temperature 1, so a calibration's effect is visible.
    """
    scores = score(clf, examples, on_progress)
    confidence = scores.confidence(clf.temperature)
    report = metrics(scores.gold_labels, scores.predicted, list(confidence), clf.labels)
    report["temperature"] = clf.temperature
    report["ece_uncalibrated"] = round(
        expected_calibration_error(scores.confidence(1.0), scores.correct), 4
    )
    report["docs_per_s"] = round(len(examples) / scores.elapsed_s, 2) if scores.elapsed_s else None
    return report, scores


def write_chart(
    path: Path, confidence: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], title: str
) -> None:
    """PNG with a reliability diagram and the accuracy-vs-coverage curve (needs matplotlib)."""
    edges = np.linspace(0, 1, 11)
    mids, accs = [], []
    for lo, hi in pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            mids.append(100 * (lo + hi) / 2)
            accs.append(100 * correct[in_bin].mean())
    coverages = np.linspace(0.05, 1.0, 40)
    with chart(width=10, height=4.4, ncols=2) as (fig, (left, right)):
        left.bar(mids, accs, width=9, color=COLORS["slm"], label="accuracy in bin")
        left.plot([0, 100], [0, 100], "--", color=COLORS["muted"], label="perfect calibration")
        left.set(xlim=(0, 100), ylim=(0, 100))
        left.legend(loc="upper left")
        label_axes(
            left,
            "Reliability: bars on the diagonal are calibrated",
            "confidence of the small model (%)",
            "accuracy (%)",
        )
        right.plot(
            coverages * 100,
            [100 * accuracy_at_coverage(confidence, correct, c) for c in coverages],
            color=COLORS["slm"],
        )
        label_axes(
            right,
            "Accuracy of the documents kept",
            "coverage: most confident share kept (%)",
            "accuracy (%)",
        )
        for ax in (left, right):
            percent_axis(ax.xaxis)
            percent_axis(ax.yaxis)
        fig.suptitle(title)
        save_png(fig, path)
