"""The escalation policy: which documents the SLM keeps and which go to the frontier.

A document is kept when its (calibrated) confidence reaches the threshold of the label
the SLM chose (per-label thresholds) or the global threshold. Thresholds are solved on
held-out data for a target the user states in their own terms: accuracy on what the SLM
keeps, the share escalated, or dollars per 1,000 documents.

A rate or spend target is a promise about documents the policy has not seen: the
held-out rate is only an estimate of it. So the threshold is fitted until the one-sided
95 % upper bound on the escalation rate (Wilson score, from the held-out size) meets
the target, not the held-out rate itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.candidates import DEFAULT_TARGET_RECALL, CandidateRule, choose_candidates
from shiftdown.errors import ConfigError
from shiftdown.manifest import ModelManifest
from shiftdown.taxonomy import NONE_LABEL

KEPT_ACCURACY = "kept_accuracy"
MAX_ESCALATION = "max_escalation"
MAX_USD_PER_1K = "max_usd_per_1k"
KINDS = (KEPT_ACCURACY, MAX_ESCALATION, MAX_USD_PER_1K)

# Above any confidence: every document is escalated.
ESCALATE_ALL = 1.000001
# One-sided 95 %: the normal quantile of the escalation-rate bound.
BOUND_Z = 1.6448536269514722

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
# Open set: which documents the SLM called none, and which are none in truth.
NoneMasks = tuple[Bools, Bools]


@dataclass(frozen=True)
class Target:
    """What the policy must achieve on held-out data."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown target {self.kind!r}: one of {', '.join(KINDS)}")
        if self.value < 0 or (self.kind != MAX_USD_PER_1K and self.value > 1):
            raise ConfigError(f"target {self.kind}={self.value} is out of range")

    def describe(self) -> str:
        """The target in words, for tables and notes."""
        if self.kind == KEPT_ACCURACY:
            return f"accuracy on kept documents >= {100 * self.value:.1f} %"
        if self.kind == MAX_ESCALATION:
            return f"escalation rate <= {100 * self.value:.1f} %"
        return f"frontier spend <= ${self.value:.4f} per 1,000 documents"


@dataclass(frozen=True)
class Economics:
    """What an escalation costs and how often the frontier model gets it right."""

    usd_per_escalation: float
    frontier_accuracy: float = 1.0


@dataclass(frozen=True)
class Outcome:
    """A policy's figures on a labelled set."""

    documents: int
    escalation_rate: float
    kept_accuracy: float | None
    overall_accuracy: float
    usd_per_1k: float
    # Open set only: the share of none documents that end as none (the SLM's kept none
    # answers, and escalated ones at the frontier's accuracy), and the precision of the
    # SLM's kept none answers.
    none_recall: float | None = None
    none_precision: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Rounded figures for JSON and manifests (a closed set's without the none ones)."""
        return {
            k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in asdict(self).items()
            if v is not None or not k.startswith("none_")
        }


@dataclass
class Policy:
    """Thresholds and how they were chosen; stored in a model version's manifest."""

    threshold: float
    target: Target
    per_label: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    fitted: dict[str, Any] = field(default_factory=dict)
    candidates: CandidateRule | None = None
    # Open set: how much more probable than the best label none must be for the SLM to
    # answer none (log of the ratio; 0: plain argmax). See ``fit_none_margin``.
    none_margin: float = 0.0

    def threshold_for(self, label: str) -> float:
        """The threshold a document predicted as ``label`` must reach to be kept."""
        return self.per_label.get(label, self.threshold)

    def escalate(self, predicted: Sequence[str], confidence: Floats) -> Bools:
        """Which documents this policy sends to the frontier."""
        limits = np.asarray([self.threshold_for(p) for p in predicted], dtype=np.float64)
        return np.asarray(confidence < limits)

    def fit_candidates(
        self,
        logits: Floats,
        gold: npt.NDArray[np.intp],
        predicted: Sequence[str],
        confidence: Floats,
        target_recall: float = DEFAULT_TARGET_RECALL,
    ) -> CandidateRule:
        """Choose (and keep) how many labels an escalated document's frontier request
        offers, on the held-out documents this policy escalates."""
        escalated = self.escalate(predicted, confidence)
        self.candidates = choose_candidates(logits, gold, escalated, target_recall)
        return self.candidates

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the manifest."""
        # Thresholds and the none margin unrounded: a threshold just under 1 rounded to 1.0
        # would escalate the very documents it was solved to keep, and a margin rounded up
        # past the ratio it was fitted just below would turn those answers away from none.
        return {
            "threshold": self.threshold,
            "per_label": dict(self.per_label),
            "target": {"kind": self.target.kind, "value": self.target.value},
            "temperature": self.temperature,
            "fitted": self.fitted,
            **({"candidates": self.candidates.to_dict()} if self.candidates else {}),
            **({"none_margin": self.none_margin} if self.none_margin else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """The policy stored by ``to_dict``."""
        return cls(
            threshold=float(data["threshold"]),
            target=Target(data["target"]["kind"], float(data["target"]["value"])),
            per_label={k: float(v) for k, v in (data.get("per_label") or {}).items()},
            temperature=float(data.get("temperature", 1.0)),
            fitted=dict(data.get("fitted") or {}),
            candidates=CandidateRule.from_dict(data["candidates"])
            if data.get("candidates")
            else None,
            none_margin=float(data.get("none_margin", 0.0)),
        )


def none_log_ratio(probs: Floats, none_index: int) -> Floats:
    """log(p(none) / p(best label)) of each row: above the margin, the answer is none."""
    labels = np.delete(probs, none_index, axis=1).max(axis=1)
    tiny = np.finfo(np.float64).tiny
    return np.asarray(np.log(np.maximum(probs[:, none_index], tiny) / np.maximum(labels, tiny)))


def answers(
    probs: Floats, none_index: int | None, margin: float
) -> tuple[npt.NDArray[np.intp], Floats]:
    """Each row's answer index and its probability: the most probable outcome, except
    that none must beat the best label by ``margin`` (``none_index`` None: closed set)."""
    top = np.asarray(probs.argmax(axis=1), dtype=np.intp)
    if none_index is not None and margin:
        best_label = np.delete(probs, none_index, axis=1).argmax(axis=1)
        best_label = best_label + (best_label >= none_index)
        top = np.where(none_log_ratio(probs, none_index) > margin, none_index, best_label)
    return top, probs[np.arange(len(top)), top]


def fit_none_margin(probs: Floats, none_index: int, is_none: Bools, recall: float) -> float:
    """The largest margin at which the SLM still answers none on ``recall`` of the
    documents that are none: the fewest known documents called none (each a wrong answer
    the policy may keep) for the none recall the user asks of the SLM."""
    ratios = np.sort(none_log_ratio(probs[is_none], none_index))[::-1]
    if not len(ratios) or recall <= 0:
        return 0.0
    k = min(len(ratios), max(1, math.ceil(recall * len(ratios) - 1e-9)))
    # Strictly below the k-th largest ratio, so that it is still answered none.
    return float(np.nextafter(ratios[k - 1], -np.inf))


def stored_policy(manifest: ModelManifest) -> Policy | None:
    """The policy stored in a model version's manifest (None: runs use the task's
    hand-set threshold)."""
    return Policy.from_dict(manifest.policy) if manifest.policy else None


def offered_k(policy: Policy | None, override: int | None = None) -> int:
    """How many of the SLM's top labels an escalated document's frontier request offers
    under a model version's stored policy (``override``: SHIFTDOWN_FRONTIER_TOP_K);
    0: the whole taxonomy."""
    if override is not None:
        return override
    return policy.candidates.k if policy and policy.candidates else 0


def _none_figures(
    escalate: Bools, nones: NoneMasks | None, econ: Economics
) -> tuple[float | None, float | None]:
    if nones is None:
        return None, None
    predicted, gold = nones
    kept_none = ~escalate & predicted
    found = int((kept_none & gold).sum())
    recall = (
        (found + econ.frontier_accuracy * int((escalate & gold).sum())) / int(gold.sum())
        if gold.any()
        else None
    )
    precision = found / int(kept_none.sum()) if kept_none.any() else None
    return recall, precision


def outcome(
    escalate: Bools, correct: Bools, econ: Economics, nones: NoneMasks | None = None
) -> Outcome:
    """Escalation rate, kept and overall accuracy and spend of one escalation decision
    (and, given ``nones``, its none recall and precision)."""
    n = len(correct)
    kept = ~escalate
    n_esc = int(escalate.sum())
    kept_correct = int(correct[kept].sum())
    none_recall, none_precision = _none_figures(escalate, nones, econ)
    return Outcome(
        documents=n,
        escalation_rate=n_esc / n if n else 0.0,
        kept_accuracy=kept_correct / int(kept.sum()) if kept.any() else None,
        overall_accuracy=(kept_correct + econ.frontier_accuracy * n_esc) / n if n else 0.0,
        usd_per_1k=1000.0 * econ.usd_per_escalation * n_esc / n if n else 0.0,
        none_recall=none_recall,
        none_precision=none_precision,
    )


def _threshold_for_accuracy(confidence: Floats, correct: Bools, accuracy: float) -> float:
    """The lowest threshold whose kept documents reach ``accuracy`` (least escalation)."""
    if len(confidence) == 0:
        return ESCALATE_ALL
    order = np.argsort(confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(np.float64)
    # Kept set for threshold conf[i] is the suffix from the first index of that value.
    suffix_correct = np.cumsum(ok[::-1])[::-1]
    kept = np.arange(len(conf), 0, -1, dtype=np.float64)
    first = np.r_[True, conf[1:] != conf[:-1]]
    meets = first & (suffix_correct / kept >= accuracy - 1e-12)
    hits = np.flatnonzero(meets)
    return float(conf[hits[0]]) if len(hits) else ESCALATE_ALL


def _threshold_for_rate(confidence: Floats, rate: float) -> float:
    """The highest threshold that escalates at most ``rate`` of the documents."""
    n = len(confidence)
    k = math.floor(rate * n + 1e-9)
    if n == 0 or k >= n:
        return ESCALATE_ALL
    return float(np.sort(confidence)[k])


def rate_upper_bound(escalated: int, n: int) -> float:
    """One-sided 95 % upper bound (Wilson score) on the escalation rate of unseen
    documents, given ``escalated`` of ``n`` held-out documents escalated."""
    if n == 0:
        return 1.0
    p, z2 = escalated / n, BOUND_Z**2
    centre = p + z2 / (2 * n)
    spread = BOUND_Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


def bounded_rate(rate: float, n: int) -> float:
    """The highest held-out escalation rate (a whole number of ``n`` documents) whose
    upper bound keeps ``rate``: what a fit on ``n`` documents may use."""
    if rate >= 1.0 or n == 0:
        return rate
    lo, hi = 0, n  # the bound grows with the count: bisect on it
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rate_upper_bound(mid, n) <= rate + 1e-12:
            lo = mid
        else:
            hi = mid - 1
    return lo / n


def _max_rate(target: Target, econ: Economics, n: int) -> float:
    if target.kind == MAX_ESCALATION:
        rate = target.value
    elif econ.usd_per_escalation <= 0:
        return 1.0
    else:
        rate = min(1.0, target.value / (1000.0 * econ.usd_per_escalation))
    return bounded_rate(rate, n)


def solve_global(
    confidence: Floats,
    correct: Bools,
    target: Target,
    econ: Economics,
    forced: Bools | None = None,
) -> float:
    """One threshold for every label that meets ``target`` on this held-out data.

    ``forced``: documents escalated whatever their confidence (unfamiliar ones); a rate
    or spend target leaves room for them, so that the two together meet it."""
    if target.kind == KEPT_ACCURACY:
        return _threshold_for_accuracy(confidence, correct, target.value)
    rate = _max_rate(target, econ, len(confidence))
    if forced is None or not forced.any():
        return _threshold_for_rate(confidence, rate)
    free = ~forced
    budget = rate * len(confidence) - int(forced.sum())
    if budget <= 0 or not free.any():
        return 0.0  # the forced escalations alone use up the budget
    return _threshold_for_rate(confidence[free], budget / int(free.sum()))


def _per_label_at(
    confidence: Floats,
    predicted: npt.NDArray[np.str_],
    correct: Bools,
    accuracy: float,
    min_support: int,
) -> tuple[float, dict[str, float]]:
    fallback = _threshold_for_accuracy(confidence, correct, accuracy)
    per_label: dict[str, float] = {}
    for label in np.unique(predicted):
        mine = predicted == label
        if mine.sum() >= min_support:
            per_label[str(label)] = _threshold_for_accuracy(
                confidence[mine], correct[mine], accuracy
            )
    return fallback, per_label


def solve_per_label(
    confidence: Floats,
    predicted: Sequence[str],
    correct: Bools,
    target: Target,
    econ: Economics,
    min_support: int = 10,
    forced: Bools | None = None,
) -> tuple[float, dict[str, float]]:
    """A threshold per predicted label (labels with fewer than ``min_support`` held-out
    predictions use a global one).

    Every label is held to the same accuracy on what it keeps; for a spend or
    escalation target, that common accuracy is the highest the budget allows.
    """
    pred = np.asarray(predicted)
    if target.kind == KEPT_ACCURACY:
        return _per_label_at(confidence, pred, correct, target.value, min_support)
    rate = _max_rate(target, econ, len(confidence))
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        fallback, per_label = _per_label_at(confidence, pred, correct, mid, min_support)
        policy = Policy(fallback, target, per_label)
        escalate = policy.escalate(list(pred), confidence)
        if forced is not None:
            escalate = escalate | forced
        if escalate.mean() <= rate + 1e-12:
            lo = mid
        else:
            hi = mid
    return _per_label_at(confidence, pred, correct, lo, min_support)


def fit_policy(
    confidence: Floats,
    predicted: Sequence[str],
    correct: Bools,
    target: Target,
    econ: Economics,
    per_label: bool = False,
    temperature: float = 1.0,
    nones: NoneMasks | None = None,
    forced: Bools | None = None,
) -> Policy:
    """Solve the thresholds for ``target`` and record what they gave on this data.

    ``forced``: documents escalated whatever the policy says (unfamiliar ones): a rate
    or spend target counts them, and so does the recorded escalation bound.

    Open set (``nones`` given): the none outcome always gets its own threshold, held to
    the accuracy the other kept documents reach, so a document the SLM calls none is
    kept only when its none answers are as sure as its labels."""
    if per_label:
        threshold, labels = solve_per_label(
            confidence, predicted, correct, target, econ, forced=forced
        )
    else:
        threshold, labels = solve_global(confidence, correct, target, econ, forced), {}
    policy = Policy(threshold, target, labels, temperature)
    if nones is not None and nones[0].any():
        called_none = nones[0]
        kept = ~policy.escalate(predicted, confidence) & ~called_none
        level = target.value if target.kind == KEPT_ACCURACY else float(correct[kept].mean())
        policy.per_label[NONE_LABEL] = _threshold_for_accuracy(
            confidence[called_none], correct[called_none], level if kept.any() else 1.0
        )
    escalate = policy.escalate(predicted, confidence)
    if forced is not None:
        escalate = escalate | forced
    policy.fitted = outcome(escalate, correct, econ, nones).as_dict()
    policy.fitted["escalation_rate_upper_95"] = round(
        rate_upper_bound(int(escalate.sum()), len(escalate)), 6
    )
    if nones is not None:  # what the report's none-rate drift check expects
        policy.fitted["none_rate"] = round(float(nones[1].mean()), 6)
    return policy


CURVE_RATES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


def curve(
    confidence: Floats,
    correct: Bools,
    econ: Economics,
    rates: Sequence[float] = CURVE_RATES,
    nones: NoneMasks | None = None,
) -> list[tuple[float, Outcome]]:
    """(threshold, outcome) at each escalation rate: the whole cost/accuracy trade-off."""
    points = []
    for rate in rates:
        threshold = _threshold_for_rate(confidence, rate)
        points.append((threshold, outcome(confidence < threshold, correct, econ, nones)))
    return points


def cross_checked(
    confidence: Floats,
    predicted: Sequence[str],
    correct: Bools,
    target: Target,
    econ: Economics,
    per_label: bool,
    folds: int = 2,
    seed: int = 0,
    nones: NoneMasks | None = None,
    forced: Bools | None = None,
) -> Outcome:
    """The policy's figures on data it was not fitted on: fit on all folds but one,
    decide the held-back fold, and score every document's out-of-fold decision.

    Fitting and scoring on the same examples flatters per-label thresholds, which have
    far more freedom to fit noise than one global threshold.
    """
    n = len(correct)
    fold = np.random.default_rng(seed).permutation(n) % folds
    pred = np.asarray(predicted)
    escalate = np.zeros(n, dtype=bool)
    for k in range(folds):
        fit, test = fold != k, fold == k
        fit_nones = (nones[0][fit], nones[1][fit]) if nones is not None else None
        policy = fit_policy(
            confidence[fit],
            list(pred[fit]),
            correct[fit],
            target,
            econ,
            per_label,
            1.0,
            fit_nones,
            None if forced is None else forced[fit],
        )
        escalate[test] = policy.escalate(list(pred[test]), confidence[test])
        if forced is not None:
            escalate[test] |= forced[test]
    return outcome(escalate, correct, econ, nones)
