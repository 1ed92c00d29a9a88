"""Detection of unknown intents, the open-set literature's way (ADB, TEXTOIR): each
detector's separation of known from unknown test queries, its operating point at the
threshold fitted with no unknown data, and the cascade it makes.

Detectors (higher: more likely unknown):

- ``max_softmax``: one minus the top known label's probability;
- ``none_answer``: the SLM's plain answer is none (a yes/no detector);
- ``knn``, ``mahalanobis``: the distances of ``models.familiarity`` in the final hidden
  states (the answer position and the one before it, as served), fitted on the training
  split, thresholded on the held-out split for a 5 % false-flag rate;
- ``knn_answer_only``: kNN in the answer position's state alone (what was served before);
- ``X+none``: X's flag or the none answer.

Used by ``bench.open_set``; the figures are documented in docs/open-set.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.calibration import softmax_rows
from models.familiarity import DEFAULT_FALSE_FLAG_RATE, METHODS, Method, fit
from models.hidden_state import STATE_POSITIONS

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


def auroc(scores: Floats, positive: Bools) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    # Average ranks over ties.
    values = np.concatenate([pos, neg])
    for v in np.unique(values):
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fpr_at_tpr(scores: Floats, positive: Bools, tpr: float = 0.95) -> float:
    """Share of negatives flagged at the loosest threshold that flags ``tpr`` of the
    positives."""
    cut = np.quantile(scores[positive], 1.0 - tpr, method="lower")
    return float((scores[~positive] >= cut).mean())


@dataclass(frozen=True)
class Line:
    """One detector on the test split: its scores, and its flags at the fitted threshold."""

    name: str
    scores: Floats
    flags: Bools

    def figures(self, unknown: Bools) -> dict[str, float]:
        """AUROC and FPR at 95 % TPR, unknown recall and known false flags."""
        return {
            "auroc": auroc(self.scores, unknown),
            "fpr_at_95_tpr": fpr_at_tpr(self.scores, unknown),
            "unknown_recall": float(self.flags[unknown].mean()),
            "known_false_flags": float(self.flags[~unknown].mean()),
        }


def detector_lines(
    test_logits: Floats,
    held_logits: Floats,
    labels: Sequence[str],
    none_label: str,
    states: dict[str, npt.NDArray[np.float32]],
    train_labels: Sequence[str],
    rate: float = DEFAULT_FALSE_FLAG_RATE,
    positions: int = STATE_POSITIONS,
) -> tuple[list[Line], dict[str, Any]]:
    """Every detector's line on the test split, and what was fitted (thresholds).
    ``states`` rows hold ``positions`` states side by side, the answer position's last."""
    none = labels.index(none_label)
    known = [i for i in range(len(labels)) if i != none]
    lines: list[Line] = []
    fitted: dict[str, Any] = {}

    def msp(logits: Floats) -> Floats:
        return np.asarray(1.0 - softmax_rows(logits, 1.0)[:, known].max(axis=1))

    held_msp = msp(held_logits)
    cut = float(np.quantile(held_msp, 1.0 - rate, method="higher"))
    test_msp = msp(test_logits)
    lines.append(Line("max_softmax", test_msp, test_msp > cut))
    fitted["max_softmax"] = {"threshold": cut}
    answered_none = test_logits.argmax(axis=1) == none
    lines.append(Line("none_answer", answered_none.astype(np.float64), answered_none))
    width = states["train"].shape[1] // positions
    answer_only = {part: rows[:, -width:] for part, rows in states.items()}
    fits: list[tuple[str, Method, dict[str, npt.NDArray[np.float32]], int]]
    fits = [(m, m, states, positions) for m in METHODS]
    fits.append(("knn_answer_only", "knn", answer_only, 1))
    for name, method, rows, n_pos in fits:
        score = fit(method, rows["train"], train_labels, rows["heldout"], rate, positions=n_pos)
        values, flags = score.unfamiliar(rows["test"])
        lines.append(Line(name, values, flags))
        # The union ranks by the distance, with the none answers first.
        union = np.where(answered_none, np.inf, values)
        lines.append(Line(f"{name}+none", union, flags | answered_none))
        fitted[name] = {"threshold": score.threshold, "calibrated_on": score.calibrated_on}
    return lines, fitted
