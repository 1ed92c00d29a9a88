"""Calibration, the threshold solver and the drift check, on synthetic scores whose
truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import fit_temperature, softmax_rows
from models.candidates import (
    CandidateRule,
    choose_candidates,
    gold_ranks,
    recall_curve,
    top_candidates,
)
from models.evaluate import expected_calibration_error
from models.policy import (
    KEPT_ACCURACY,
    MAX_ESCALATION,
    MAX_USD_PER_1K,
    Economics,
    Policy,
    Target,
    bounded_rate,
    cross_checked,
    curve,
    fit_policy,
    offered_k,
    outcome,
    rate_upper_bound,
    stored_policy,
)
from models.retrain import Contender, judge
from shiftdown.drift import DriftCheck
from shiftdown.errors import ConfigError
from shiftdown.manifest import ModelManifest


def synthetic_logits(n: int, k: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """Logits of a model that is calibrated at temperature ``scale``: labels are drawn
    from softmax(logits / scale), so dividing by ``scale`` recovers the truth."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.6, size=(n, k))
    probs = softmax_rows(true_logits, 1.0)
    gold = np.asarray([rng.choice(k, p=p) for p in probs], dtype=np.intp)
    return true_logits * scale, gold


def test_temperature_scaling_fixes_an_overconfident_model() -> None:
    logits, gold = synthetic_logits(4000, 10, scale=3.0, seed=1)
    correct = logits.argmax(axis=1) == gold
    before = expected_calibration_error(softmax_rows(logits, 1.0).max(axis=1), correct)
    t = fit_temperature(logits, gold)
    after = expected_calibration_error(softmax_rows(logits, t).max(axis=1), correct)
    assert 2.6 < t < 3.4, t  # recovers the overconfidence factor
    assert before > 0.15 and after < 0.03 and after < before / 5, (before, after)
    # Calibration never changes the predicted label.
    assert (softmax_rows(logits, t).argmax(axis=1) == logits.argmax(axis=1)).all()


def test_an_underconfident_model_is_sharpened() -> None:
    logits, gold = synthetic_logits(3000, 5, scale=0.5, seed=2)
    assert 0.4 < fit_temperature(logits, gold) < 0.6


def calibrated_scores(
    n: int, seed: int, penalty: float = 0.25
) -> tuple[np.ndarray, np.ndarray, list[str]]:  # type: ignore[type-arg]
    """Confidences with P(correct) = confidence, over three predicted labels of which
    one ('hard') is overconfident: its real accuracy is ``penalty`` lower."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(6, 1.2, size=n)
    labels = rng.choice(["a", "b", "hard"], size=n)
    p_right = np.where(labels == "hard", np.clip(conf - penalty, 0, 1), conf)
    correct = rng.random(n) < p_right
    return conf, correct, [str(x) for x in labels]


ECON = Economics(usd_per_escalation=0.0004, frontier_accuracy=1.0)


@pytest.mark.parametrize(
    ("kind", "value"),
    [(KEPT_ACCURACY, 0.95), (MAX_ESCALATION, 0.1), (MAX_USD_PER_1K, 0.02)],
)
@pytest.mark.parametrize("per_label", [False, True])
def test_solver_meets_each_target_on_the_data_it_was_fitted_on(
    kind: str, value: float, per_label: bool
) -> None:
    conf, correct, labels = calibrated_scores(3000, seed=3)
    policy = fit_policy(conf, labels, correct, Target(kind, value), ECON, per_label)
    got = outcome(policy.escalate(labels, conf), correct, ECON)
    if kind == KEPT_ACCURACY:
        assert got.kept_accuracy is not None and got.kept_accuracy >= value
        # ...and no lower single threshold would have: least escalation for the target.
        if not per_label:
            lower = conf[conf < policy.threshold].max()
            worse = outcome(conf < lower, correct, ECON)
            assert worse.kept_accuracy is not None and worse.kept_accuracy < value
    else:
        rate = value if kind == MAX_ESCALATION else value / (1000 * ECON.usd_per_escalation)
        # Fitted to the 95 % upper bound of the rate, not to the held-out rate itself...
        n_esc = round(got.escalation_rate * len(conf))
        assert rate_upper_bound(n_esc, len(conf)) <= rate + 1e-9
        assert got.escalation_rate < rate - 0.005
        # ...using all of what that bound allows (per-label thresholds move in steps and
        # may leave part of it unused).
        allowed = bounded_rate(rate, len(conf))
        assert allowed - (0.03 if per_label else 0.001) <= got.escalation_rate <= allowed
        assert policy.fitted["escalation_rate_upper_95"] <= rate + 1e-6
    assert policy.fitted["escalation_rate"] == pytest.approx(got.escalation_rate, abs=1e-6)
    if per_label:
        assert set(policy.per_label) == {"a", "b", "hard"}
        # The overconfident label must be more confident to be kept.
        assert policy.per_label["hard"] > policy.per_label["a"]


def test_targets_hold_on_fresh_data_from_the_same_source() -> None:
    conf, correct, labels = calibrated_scores(4000, seed=4, penalty=0.0)
    policy = fit_policy(conf, labels, correct, Target(KEPT_ACCURACY, 0.95), ECON)
    conf2, correct2, labels2 = calibrated_scores(4000, seed=5, penalty=0.0)
    got = outcome(policy.escalate(labels2, conf2), correct2, ECON)
    assert got.kept_accuracy is not None and got.kept_accuracy >= 0.94
    assert 0.3 < got.escalation_rate < 0.8


def test_an_escalation_target_holds_on_unseen_data_nineteen_times_in_twenty() -> None:
    # Fitted on 400 held-out documents, judged on 4,000 fresh ones, 200 times: fitted to
    # the held-out rate itself, the target would be broken about half the time.
    broken = 0
    for seed in range(200):
        conf, correct, labels = calibrated_scores(400, seed=100 + seed, penalty=0.0)
        policy = fit_policy(conf, labels, correct, Target(MAX_ESCALATION, 0.1), ECON)
        fresh, _, _ = calibrated_scores(4000, seed=10_000 + seed, penalty=0.0)
        broken += bool((fresh < policy.threshold).mean() > 0.1)
    assert broken <= 200 * 0.08, broken


def test_per_label_thresholds_pay_off_when_one_label_is_overconfident() -> None:
    conf, correct, labels = calibrated_scores(4000, seed=6)
    target = Target(MAX_ESCALATION, 0.2)
    one = cross_checked(conf, labels, correct, target, ECON, per_label=False)
    per = cross_checked(conf, labels, correct, target, ECON, per_label=True)
    assert per.escalation_rate <= 0.21 and one.escalation_rate <= 0.21
    assert per.overall_accuracy > one.overall_accuracy


def test_policy_round_trips_and_escalates_by_label() -> None:
    policy = Policy(0.5, Target(KEPT_ACCURACY, 0.9), {"hard": 0.9}, temperature=1.3)
    again = Policy.from_dict(policy.to_dict())
    assert again.per_label == {"hard": 0.9} and again.temperature == 1.3
    got = again.escalate(["a", "hard", "a"], np.asarray([0.6, 0.6, 0.4]))
    assert got.tolist() == [False, True, True]


def test_unreachable_accuracy_escalates_everything_and_bad_targets_are_refused() -> None:
    conf, correct, labels = calibrated_scores(500, seed=7)
    correct[:] = False
    policy = fit_policy(conf, labels, correct, Target(KEPT_ACCURACY, 0.99), ECON)
    assert policy.escalate(labels, conf).all()
    with pytest.raises(ConfigError):
        Target(KEPT_ACCURACY, 1.5)
    with pytest.raises(ConfigError):
        Target("cheapest", 0.1)


def test_curve_trades_escalation_for_accuracy_and_dollars() -> None:
    conf, correct, _ = calibrated_scores(2000, seed=8)
    points = curve(conf, correct, ECON)
    rates = [o.escalation_rate for _, o in points]
    assert rates == sorted(rates) and rates[0] == 0.0 and rates[-1] == 1.0
    overall = [o.overall_accuracy for _, o in points]
    assert overall == sorted(overall) and overall[-1] == 1.0
    assert points[-1][1].usd_per_1k == pytest.approx(1000 * ECON.usd_per_escalation)


def test_shadow_judge_prefers_less_escalation_at_the_same_accuracy() -> None:
    target = Target(KEPT_ACCURACY, 0.95)
    conf, correct, labels = calibrated_scores(3000, seed=9)
    weak = cross_checked(conf, labels, correct, target, ECON, False)
    sharper = np.clip(conf + 0.5 * (correct - 0.5) * 0.4, 0, 1)  # separates right from wrong
    strong = cross_checked(sharper, labels, correct, target, ECON, False)
    policy = Policy(0.5, target)
    assert judge(Contender(1, policy, strong), Contender(1, policy, weak), target).wins
    assert not judge(Contender(1, policy, weak), Contender(1, policy, strong), target).wins
    assert not judge(Contender(1, policy, weak), Contender(1, policy, weak), target).wins


def test_drift_flags_a_shift_and_not_noise_or_small_samples() -> None:
    steady = DriftCheck("escalation rate", 0.11, 0.09, 500, 0.05, "held-out")
    shifted = DriftCheck("escalation rate", 0.31, 0.09, 500, 0.05, "held-out")
    tiny = DriftCheck("escalation rate", 0.6, 0.09, 10, 0.05, "held-out")
    unknown = DriftCheck("escalation rate", 0.6, None, 500, 0.05, "no reference")
    assert not steady.flagged and "steady" in steady.message()
    assert shifted.flagged and "DRIFT" in shifted.message()
    assert not tiny.flagged and "too few" in tiny.message()
    assert not unknown.flagged


def test_candidate_k_is_the_smallest_reaching_the_target_recall_on_escalated_documents() -> None:
    rng = np.random.default_rng(7)
    n, width = 2000, 20
    logits = rng.normal(size=(n, width))
    gold = rng.integers(0, width, size=n)
    # The true label is first for sure documents, further down for unsure ones.
    sure = rng.random(n) < 0.8
    logits[np.arange(n), gold] += np.where(sure, 6.0, 2.5)
    ranks = gold_ranks(logits, gold)
    assert ranks[sure].mean() < 0.05 < ranks[~sure].mean()
    rule = choose_candidates(logits, gold, ~sure, target_recall=0.95)
    curve = recall_curve(ranks[~sure], width)
    assert rule.chosen_on == "escalated" and rule.documents == int((~sure).sum())
    assert 1 < rule.k <= width // 2
    assert curve[rule.k - 1] >= 0.95 > curve[rule.k - 2] and rule.recall == curve[rule.k - 1]
    # Measured on every document, the same k looks better than it is for escalations.
    assert rule.recall_all > rule.recall
    # Too few escalated documents: chosen on all of them.
    few = np.zeros(n, dtype=bool)
    few[:10] = True
    assert choose_candidates(logits, gold, few, 0.95).chosen_on == "all"
    # A k of most of the taxonomy is not worth narrowing.
    noise = rng.normal(size=(n, width))
    assert choose_candidates(noise, gold, ~sure, 0.995).k == 0


def test_the_offered_labels_come_from_the_stored_distribution_by_probability() -> None:
    # Postgres's jsonb returns keys in its own order, not the writer's.
    stored = {"b": 0.1, "a": 0.5, "ccc": 0.3, "d": 0.05}
    assert top_candidates(stored, 3) == ["a", "ccc", "b"]
    assert top_candidates(stored, 5) is None  # fewer stored than offered: whole taxonomy
    assert top_candidates(stored, 0) is None and top_candidates(None, 3) is None


def test_a_policy_keeps_its_candidate_rule() -> None:
    rule = CandidateRule(5, 0.995, 0.996, 0.999, "escalated", 120)
    policy = Policy(0.4, Target(MAX_ESCALATION, 0.1), candidates=rule)
    again = Policy.from_dict(policy.to_dict())
    assert again.candidates == rule
    stored = stored_policy(ModelManifest(policy=policy.to_dict()))
    assert offered_k(stored) == 5
    assert offered_k(stored, override=0) == 0
    assert stored_policy(ModelManifest()) is None
    assert offered_k(None) == 0 and offered_k(None, override=3) == 3
