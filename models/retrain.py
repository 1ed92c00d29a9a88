"""Shadow evaluation: a candidate model against the promoted one, on the same held-out
data and for the same target, before it may serve.

Each model is calibrated and given its own thresholds for the target; both are judged
on held-out folds their thresholds were not fitted on (``cross_checked``), so neither
is flattered by its own fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.calibration import fit_temperature
from models.policy import (
    KEPT_ACCURACY,
    Economics,
    Outcome,
    Policy,
    Target,
    cross_checked,
    fit_policy,
)
from models.scores import Scores

# A win must be by more than noise on a few hundred examples: 0.5 points.
MARGIN = 0.005


@dataclass(frozen=True)
class Contender:
    """One model's calibrated policy and held-out outcome."""

    temperature: float
    policy: Policy
    outcome: Outcome


@dataclass(frozen=True)
class Verdict:
    """Whether the candidate should replace the promoted model, and why."""

    candidate: Contender
    promoted: Contender
    wins: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures for the candidate's manifest."""
        return {
            "wins": self.wins,
            "reason": self.reason,
            "candidate": self.candidate.outcome.as_dict(),
            "promoted": self.promoted.outcome.as_dict(),
        }


def contend(scores: Scores, target: Target, econ: Economics, per_label: bool) -> Contender:
    """Calibrate on the held-out scores, fit the policy, and measure it out of fold."""
    temperature = fit_temperature(scores.logits, scores.gold)
    conf = scores.confidence(temperature)
    policy = fit_policy(
        conf, scores.predicted, scores.correct, target, econ, per_label, temperature
    )
    policy.fit_candidates(scores.logits, scores.gold, scores.predicted, conf)
    checked = cross_checked(conf, scores.predicted, scores.correct, target, econ, per_label)
    return Contender(temperature, policy, checked)


def judge(candidate: Contender, promoted: Contender, target: Target) -> Verdict:
    """The candidate wins on the target's own terms.

    For an accuracy target the winner escalates less (pays less) while holding the
    accuracy; for an escalation or spend budget the winner is more accurate within it.
    """
    c, p = candidate.outcome, promoted.outcome
    if target.kind == KEPT_ACCURACY:
        wins = (
            c.escalation_rate < p.escalation_rate - MARGIN
            and (c.kept_accuracy or 0.0) >= (p.kept_accuracy or 0.0) - MARGIN
        )
        reason = (
            f"escalation {100 * c.escalation_rate:.1f} % vs {100 * p.escalation_rate:.1f} % "
            f"for {target.describe()}"
        )
    else:
        wins = c.overall_accuracy > p.overall_accuracy + MARGIN
        reason = (
            f"overall accuracy {100 * c.overall_accuracy:.1f} % vs "
            f"{100 * p.overall_accuracy:.1f} % at {target.describe()}"
        )
    return Verdict(candidate, promoted, wins, reason)
