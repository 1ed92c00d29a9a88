"""Open-set BANKING77: documents that fit no label, found by the SLM alone and by the
cascade, on the standard open intent classification setup (``bench.open_set_data``:
a seeded 25 % of the labels unknown, their queries answered none by the teacher).

The open-set model is fine-tuned on the known labels and the none outcome
(``shiftdown finetune`` on DIR/teacher.csv; this script runs it when DIR/model is
missing) and served as workers serve it (merged, ``SHIFTDOWN_SERVE_TYPE``). Every test
query is scored once; the figures:

- accuracy over known labels and none together; macro-F1 over the known labels and none;
  none recall and precision; known-label accuracy (a known query called none is wrong);
- the closed-set reference: the demo model (all 77 labels, the same recipe) on the same
  known-label queries, its answer restricted to the known labels, as a closed-set model
  of the known labels answers;
- detection beyond the none answer, on the same forward pass: a threshold on the top
  known label's probability (max-softmax) or on the known labels' energy
  (-logsumexp of their logits) turns low scores into none. Each threshold is fitted on
  the model's held-out split and applied to the test split; one is kept only where it
  beats the plain answer by half a point of held-out accuracy;
- the none margin (``policy set --none-recall``): none must beat the best label by a
  margin fitted on the held-out split for the none recall asked of the SLM (``--none-recall``,
  default 85 %): the fewest known queries called none for that recall;
- the cascade: the escalation policy (``models.policy.fit_policy``, the none outcome with
  its own threshold) fitted on the held-out split for an escalation target, the
  escalated queries answered by a stand-in frontier that is always right (the label, or
  none for unknown labels).

With ``--teach-none`` below 1 the teacher set held only some unknown labels' queries:
none recall is reported for those and for the labels never seen in training.

    python -m bench.open_set [--work DIR] [--seed 0] [--teach-none 1.0] [--none-recall 0.85]
        [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.open_set_data import DATA, finetune_command, prepare, read_pairs, read_rows
from bench.stack import ROOT
from bench.table import print_table
from bench.unfamiliar import detector_lines
from models.calibration import softmax_rows
from models.classifier import Classification, Classifier, ModelSpec, RuntimeOptions
from models.familiarity import DEFAULT_METHOD, Familiarity, fit
from models.finetune_manifest import file_sha256
from models.hidden_state import STATE_POSITIONS
from models.policy import MAX_ESCALATION, Economics, Target, answers, fit_none_margin, fit_policy
from models.registry import load_model_dir
from models.scores import Scores, score
from shiftdown.taxonomy import NONE_LABEL

Floats = npt.NDArray[np.float64]
DEMO = ROOT / "demo" / "banking77-lora"
TARGETS = (0.05, 0.10, 0.15)


def figures(pred: list[str], gold: list[str], known: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1 over known labels and none, none recall and precision, and
    accuracy on the known-label queries."""
    p, g = np.asarray(pred), np.asarray(gold)
    f1s = []
    for label in [*known, NONE_LABEL]:
        tp = int(((p == label) & (g == label)).sum())
        n_pred, n_gold = int((p == label).sum()), int((g == label).sum())
        f1s.append(2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0)
    none_gold, none_pred = g == NONE_LABEL, p == NONE_LABEL
    return {
        "accuracy": float((p == g).mean()),
        "macro_f1": float(np.mean(f1s)),
        "none_recall": float((none_pred & none_gold).sum() / max(1, none_gold.sum())),
        "none_precision": float((none_pred & none_gold).sum() / max(1, none_pred.sum())),
        "known_accuracy": float((p == g)[~none_gold].mean()),
    }


def scored(
    model: Path, examples: list[tuple[str, str]], threads: int, cache: Path
) -> tuple[Scores, npt.NDArray[np.float32]]:
    """The model's logits on ``examples``, served as workers serve it, and its final
    hidden states (``models.familiarity``); kept in ``cache`` under a hash of the served
    file, the manifest and the texts, so that a rerun (or an analysis of the same scores)
    does not score again."""
    gguf, adapter, manifest = load_model_dir(model)
    labels = tuple(manifest.labels or ())
    spec = ModelSpec(str(gguf), labels, str(adapter) if adapter else None, manifest)
    options = RuntimeOptions(n_threads=threads, parallel=8)
    key = hashlib.sha256(
        "\0".join(
            [file_sha256(gguf), file_sha256(adapter) if adapter else "", options.serve_type,
             f"hidden states of the last {STATE_POSITIONS} positions read back from the logits",
             json.dumps(manifest.to_data(), sort_keys=True), *(t for t, _ in examples)]
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    path = cache / f"scores-{key}.npz"
    index = {label: i for i, label in enumerate(labels)}
    gold = np.asarray([index[g] for _, g in examples], dtype=np.intp)
    if path.is_file():
        with np.load(path) as data:
            if "hidden" in data:
                got = Scores(
                    labels, data["logits"], gold, data["latency_ms"], float(data["elapsed"])
                )
                return got, data["hidden"]
    clf = Classifier(spec, replace(options, familiarity=False))
    clf.hidden_states = True
    states: list[npt.NDArray[np.float32]] = []

    def keep(result: Classification) -> None:
        assert result.hidden is not None
        states.append(result.hidden)

    result = score(clf, examples, on_result=keep)
    hidden = np.stack(states).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(
        path, logits=result.logits, latency_ms=result.latency_ms, elapsed=result.elapsed_s,
        hidden=hidden,
    )  # fmt: skip
    return result, hidden


class Detector:
    """The none answer, and optionally a threshold on a score of the known labels below
    which a known answer becomes none."""

    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.labels = labels
        self.none = labels.index(NONE_LABEL)
        self.known = [i for i in range(len(labels)) if i != self.none]
        self.threshold: float | None = None

    def score(self, logits: Floats) -> Floats:
        """Higher: more like a known label."""
        known = logits[:, self.known]
        if self.name == "max_softmax":
            result: Floats = softmax_rows(logits, 1.0)[:, self.known].max(axis=1)
            return result
        m = known.max(axis=1)
        return np.asarray(m + np.log(np.exp(known - m[:, None]).sum(axis=1)))  # -energy

    def predict(self, logits: Floats, threshold: float | None = None) -> list[str]:
        """Each document's outcome."""
        top = logits.argmax(axis=1)
        threshold = self.threshold if threshold is None else threshold
        if self.name != "none_answer" and threshold is not None:
            top = np.where(self.score(logits) < threshold, self.none, top)
        return [self.labels[i] for i in top]

    def fit(self, logits: Floats, gold: list[str]) -> float:
        """Choose the threshold with the best accuracy on ``gold``; returns it."""
        if self.name == "none_answer":
            return float(np.mean(np.asarray(self.predict(logits)) == np.asarray(gold)))
        best = (float(np.mean(np.asarray(self.predict(logits, -np.inf)) == gold)), -np.inf)
        for t in np.unique(self.score(logits)):
            acc = float(np.mean(np.asarray(self.predict(logits, float(t))) == np.asarray(gold)))
            if acc > best[0] + 1e-12:
                best = (acc, float(t))
        self.threshold = best[1]
        return best[0]


def escalated(
    scores: Scores,
    heldout: Scores,
    rate: float,
    flagged: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Which documents the cascade sends to the frontier: the policy fitted on the
    held-out split for the escalation target ``rate``, and the ``flagged`` ones."""
    policy = fit_policy(
        heldout.confidence(1.0),
        heldout.predicted,
        heldout.correct,
        Target(MAX_ESCALATION, rate),
        Economics(usd_per_escalation=0.0),
        nones=heldout.outcome_masks(NONE_LABEL),
    )
    escalate = np.asarray(policy.escalate(scores.predicted, scores.confidence(1.0)))
    return escalate | flagged if flagged is not None else escalate


def cascade(
    scores: Scores,
    heldout: Scores,
    gold: list[str],
    known: list[str],
    rate: float,
    flagged: npt.NDArray[np.bool_] | None = None,
) -> tuple[dict[str, float], float]:
    """The cascade's figures at an escalation target fitted on the held-out split, and
    the share of test queries it escalated (``flagged`` ones escalated whatever their
    confidence, as an unfamiliar document is)."""
    escalate = escalated(scores, heldout, rate, flagged)
    final = [g if e else p for p, g, e in zip(scores.predicted, gold, escalate, strict=True)]
    return figures(final, gold, known), float(escalate.mean())


def closed_reference(
    test: list[tuple[str, str]], known: list[str], threads: int, cache: Path
) -> float:
    """The demo model's accuracy on the known-label queries, its answer restricted to
    the known labels."""
    queries = [(t, g) for t, g in test if g != NONE_LABEL]
    ref, _ = scored(DEMO, queries, threads, cache)
    allowed = [ref.labels.index(k) for k in known]
    masked = np.full_like(ref.logits, -np.inf)
    masked[:, allowed] = ref.logits[:, allowed]
    pred = [ref.labels[i] for i in masked.argmax(axis=1)]
    return float(np.mean([p == g for p, (_, g) in zip(pred, queries, strict=True)]))


def score_cost(
    model: Path,
    texts: list[str],
    score: Familiarity,
    threads: int,
    repeats: int = 3,
    parallel: int = 8,
) -> dict[str, float]:
    """Seconds per document of classify_many without and with the unfamiliarity score
    (the hidden states read back from the logits, and the distance), ``parallel``
    documents per decode, in the same process, alternating, best of ``repeats``; and
    their ratio."""
    gguf, adapter, manifest = load_model_dir(model)
    spec = ModelSpec(str(gguf), tuple(manifest.labels or ()), str(adapter) if adapter else None)
    options = RuntimeOptions(n_threads=threads, parallel=parallel, familiarity=False)
    clf = Classifier(spec, options)
    best = {"plain": np.inf, "scored": np.inf}
    labels: dict[str, list[str]] = {}
    clf.classify_many(texts[:16])  # warm
    for _ in range(repeats):
        for kind in best:
            clf.familiarity = score if kind == "scored" else None
            clf.hidden_states = kind == "scored"
            started = time.perf_counter()
            results = clf.classify_many(texts)
            best[kind] = min(best[kind], (time.perf_counter() - started) / len(texts))
            labels[kind] = [r.label for r in results]
    same = np.mean([a == b for a, b in zip(labels["plain"], labels["scored"], strict=True)])
    return {
        "same_label": float(same),
        "documents": len(texts),
        "parallel": parallel,
        "plain_ms": 1000 * best["plain"],
        "scored_ms": 1000 * best["scored"],
        "ratio": best["scored"] / best["plain"],
    }


def unfamiliar_lines(
    work: Path,
    model: Path,
    test: list[tuple[str, str]],
    held: list[tuple[str, str]],
    runs: tuple[Scores, Scores],
    states: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    known: list[str],
    threads: int,
) -> dict[str, Any]:
    """Each detector of unknown queries (``bench.unfamiliar``) on the test split, the
    cascade with its flags escalated, and what the score costs per document."""
    scores, held_scores = runs
    held_texts = {t for t, _ in held}
    train = [(t, g) for t, g in read_pairs(work / "teacher.csv") if t not in held_texts]
    _, train_states = scored(model, train, threads, work / "scores")
    gold = [g for _, g in test]
    unknown = np.asarray([g == NONE_LABEL for g in gold])
    lines, fitted = detector_lines(
        scores.logits,
        held_scores.logits,
        scores.labels,
        NONE_LABEL,
        {"train": train_states, "heldout": states[1], "test": states[0]},
        [label for _, label in train],
    )
    out: dict[str, Any] = {"fitted": fitted, "train_documents": len(train), "lines": {}}
    for line in lines:
        lines_out: dict[str, Any] = {}
        for r in TARGETS:
            figs, escalated = cascade(scores, held_scores, gold, known, r, line.flags)
            lines_out[f"target_{round(100 * r)}"] = {"figures": figs, "escalated": escalated}
        out["lines"][line.name] = {**line.figures(unknown), "cascade": lines_out}
    default = fit(
        DEFAULT_METHOD,
        train_states,
        [label for _, label in train],
        states[1],
        positions=STATE_POSITIONS,
    )
    # One document per decode is the CPU's default (SHIFTDOWN_PARALLEL=1); eight, batched.
    out["cost"] = [
        score_cost(model, [t for t, _ in test[:512]], default, threads, parallel=p) for p in (1, 8)
    ]
    return out


def run(
    work: Path, seed: int, teach_none: float, threads: int, none_recall: float
) -> dict[str, Any]:
    """Every figure of the bench, as JSON-ready data."""
    split = prepare(work, seed, 0.75, teach_none)
    model = work / "model"
    if not (model / "manifest.json").is_file():
        print("fine-tuning the open-set model:", " ".join(finetune_command(work)), file=sys.stderr)
        subprocess.run(finetune_command(work), check=True)
    known: list[str] = split["known"]  # type: ignore[assignment]
    unseen = set(split["unseen"])  # type: ignore[call-overload]
    test = read_pairs(work / "test.csv")
    held = read_pairs(model / "heldout.csv")
    gold = [g for _, g in test]
    held_gold = [g for _, g in held]
    cache = work / "scores"
    scores, test_states = scored(model, test, threads, cache)
    held_scores, held_states = scored(model, held, threads, cache)

    detectors: dict[str, dict[str, Any]] = {}
    for name in ("none_answer", "max_softmax", "energy"):
        det = Detector(name, scores.labels)
        held_acc = det.fit(held_scores.logits, held_gold)
        detectors[name] = {
            "heldout_accuracy": held_acc,
            "threshold": det.threshold,
            **figures(det.predict(scores.logits), gold, known),
        }
    # Another score is kept only where it beats the none answer by half a point held out
    # (2.5 of the 499 documents): less is the held-out split's noise, not a better detector.
    plain = detectors["none_answer"]["heldout_accuracy"]
    better = {n: x for n, x in detectors.items() if x["heldout_accuracy"] >= plain + 0.005}
    kept = max(better, key=lambda n: better[n]["heldout_accuracy"]) if better else "none_answer"
    # The policy's none margin for the none recall asked of the SLM (policy set --none-recall).
    none_index = scores.labels.index(NONE_LABEL)
    held_none = held_scores.outcome_masks(NONE_LABEL)[1]
    margin = fit_none_margin(held_scores.probs(1.0), none_index, held_none, none_recall)
    top, _ = answers(scores.probs(1.0), none_index, margin)
    detectors[f"none_margin_{round(100 * none_recall)}"] = {
        "margin": margin,
        **figures([scores.labels[i] for i in top], gold, known),
    }
    masked = scores.logits.copy()
    masked[:, none_index] = -np.inf
    closed_known = figures([scores.labels[i] for i in masked.argmax(axis=1)], gold, known)

    test_categories = [r["category"] for r in read_rows(DATA / "test.csv")]
    slm = np.asarray(scores.predicted)
    is_none = np.asarray([g == NONE_LABEL for g in gold])
    never_seen = np.asarray([c in unseen for c in test_categories])
    by_kind: dict[str, dict[str, Any]] = {}
    for kind, mask in (("taught", is_none & ~never_seen), ("unseen", is_none & never_seen)):
        if mask.any():
            by_kind[kind] = {
                "queries": int(mask.sum()),
                "none_recall": float((slm[mask] == NONE_LABEL).mean()),
            }
    lines = {
        f"cascade_{round(100 * r)}": cascade(scores, held_scores, gold, known, r) for r in TARGETS
    }
    unfamiliar = unfamiliar_lines(
        work, model, test, held, (scores, held_scores), (test_states, held_states), known, threads
    )
    return {
        "unfamiliar": unfamiliar,
        "seed": seed,
        "teach_none": teach_none,
        "known_labels": len(known),
        "unknown_labels": len(split["unknown"]),  # type: ignore[arg-type]
        "test_queries": len(test),
        "none_queries": int(sum(g == NONE_LABEL for g in gold)),
        "closed_set_known_accuracy": closed_reference(test, known, threads, cache),
        "slm": detectors,
        "kept_detector": kept,
        "none_recall_by_kind": by_kind,
        # The open-set model with none never answered: what it knows of the known labels.
        "open_model_none_masked_known_accuracy": closed_known["known_accuracy"],
        "cascade": {k: {**f, "escalated": e} for k, (f, e) in lines.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "open-set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teach-none", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--none-recall", type=float, default=0.85, help="the SLM's none recall target (margin)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.work, args.seed, args.teach_none, args.threads, args.none_recall)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    closed = result["closed_set_known_accuracy"]
    print(
        f"open-set BANKING77, seed {result['seed']}: {result['known_labels']} known labels, "
        f"{result['unknown_labels']} unknown; {result['test_queries']} test queries, "
        f"{result['none_queries']} of them none"
    )
    pct = "{:.1%}".format
    rows = [
        [f"SLM, {name}" + (" (kept)" if name == result["kept_detector"] else ""),
         pct(x["accuracy"]), pct(x["macro_f1"]), pct(x["none_recall"]), pct(x["none_precision"]),
         pct(x["known_accuracy"]), f"{x['known_accuracy'] - closed:+.1%}", "-"]
        for name, x in result["slm"].items()
    ] + [
        [f"cascade, target {name.split('_')[1]} %", pct(x["accuracy"]), pct(x["macro_f1"]),
         pct(x["none_recall"]), pct(x["none_precision"]), pct(x["known_accuracy"]),
         f"{x['known_accuracy'] - closed:+.1%}", pct(x["escalated"])]
        for name, x in result["cascade"].items()
    ]  # fmt: skip
    print_table(
        ["line", "accuracy", "macro-F1", "none recall", "none precision", "known acc.",
         "vs closed", "escalated"],
        rows,
    )  # fmt: skip
    print(f"closed-set model on the known-label queries: {pct(closed)}")
    masked = result["open_model_none_masked_known_accuracy"]
    print(f"the open-set model on them, never answering none: {pct(masked)}")
    for kind, x in result["none_recall_by_kind"].items():
        print(
            f"none recall, {kind} unknown labels ({x['queries']} queries): {pct(x['none_recall'])}"
        )
    unfamiliar = result["unfamiliar"]
    calibrated = unfamiliar["fitted"]["knn"]["calibrated_on"]
    print(
        f"\nunknown queries detected (thresholds fitted on {calibrated} held-out known "
        f"queries for 5 % false flags; banks of {unfamiliar['train_documents']} training queries)"
    )
    print_table(
        ["detector", "AUROC", "FPR at 95 % TPR", "unknown recall", "known false flags"],
        [[name, f"{x['auroc']:.3f}", pct(x["fpr_at_95_tpr"]), pct(x["unknown_recall"]),
          pct(x["known_false_flags"])] for name, x in unfamiliar["lines"].items()],
    )  # fmt: skip
    rows = []
    for name, x in unfamiliar["lines"].items():
        for target, c in x["cascade"].items():
            f = c["figures"]
            rows.append(
                [f"{name}, {target.split('_')[1]} % target", pct(f["accuracy"]),
                 pct(c["escalated"]), pct(f["none_recall"]), pct(f["known_accuracy"])]
            )  # fmt: skip
    print("\nthe cascade, each detector's flags escalated whatever their confidence")
    print_table(["line", "accuracy", "escalated", "none recall", "known acc."], rows)
    for cost in unfamiliar["cost"]:
        print(
            f"time per document, classify_many of {cost['documents']} test queries, "
            f"{cost['parallel']} per decode: {cost['plain_ms']:.2f} ms without the score, "
            f"{cost['scored_ms']:.2f} ms with it ({cost['ratio']:.3f} x); the same label on "
            f"{pct(cost['same_label'])} of them"
        )


if __name__ == "__main__":
    main()
