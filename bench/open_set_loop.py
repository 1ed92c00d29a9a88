"""One turn of the cascade's loop on topics nobody taught: new topics arrive, the
documents the cascade escalates come back from the frontier as none, they join the
teacher set, and the model fine-tuned again is measured on other queries of the same
topics.

It starts from a work folder of the open intent protocol (``python -m bench.open_set
--work DIR --teach-none 0``: its model never saw the unknown intents). The stream is the
training split's queries of those intents, none of which the model was taught. Each is
escalated as the cascade would escalate it (the unfamiliarity score's flag, or the policy
fitted on the held-out split for ``--target``), and an escalated one is answered by a
stand-in frontier that is always right (none); one the cascade keeps gets the model's
known label and teaches nothing, as it would not on a real stream. The escalated queries
join the teacher set, the model is fine-tuned again with the same recipe (DIR/loop/model),
and both models are scored on the test split: none recall on the unknown intents' test
queries (none of them in the stream), known-label accuracy, and the cascade.

    python -m bench.open_set_loop --work DIR [--target 0.10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.open_set import escalated, figures, scored
from bench.open_set_data import DATA, finetune_command, read_pairs, read_rows, write_pairs
from bench.table import print_table
from models.familiarity import DEFAULT_METHOD, Familiarity, fit
from models.hidden_state import STATE_POSITIONS
from models.scores import Scores
from shiftdown.taxonomy import NONE_LABEL

Pairs = list[tuple[str, str]]


def fitted_score(
    model: Path, teacher: Pairs, threads: int, cache: Path
) -> tuple[Familiarity, Scores]:
    """The served unfamiliarity score of ``model`` (its bank of the teacher set without
    the held-out split, its threshold on that split for 5 % false flags), and the
    model's scores of that split, which the policy is fitted on."""
    held = read_pairs(model / "heldout.csv")
    held_texts = {t for t, _ in held}
    train = [(t, g) for t, g in teacher if t not in held_texts]
    _, train_states = scored(model, train, threads, cache)
    held_scores, held_states = scored(model, held, threads, cache)
    score = fit(
        DEFAULT_METHOD,
        train_states,
        [g for _, g in train],
        held_states,
        positions=STATE_POSITIONS,
    )
    return score, held_scores


def measured(
    model: Path,
    teacher: Pairs,
    test: Pairs,
    unseen_test: npt.NDArray[np.bool_],
    target: float,
    known: list[str],
    threads: int,
    cache: Path,
) -> dict[str, Any]:
    """The model's figures on the test split: its plain answer and the cascade with the
    unfamiliarity score."""
    score, held_scores = fitted_score(model, teacher, threads, cache)
    test_scores, test_states = scored(model, test, threads, cache)
    flags = score.unfamiliar(test_states)[1]
    plain = np.asarray(test_scores.predicted)
    gold = [g for _, g in test]
    known_mask = np.asarray([g != NONE_LABEL for g in gold])
    escalate = escalated(test_scores, held_scores, target, flags)
    # The stand-in frontier answers an escalated query right: its gold label.
    final = np.where(escalate, np.asarray(gold), plain)
    return {
        "plain_none_recall_unseen": float((plain[unseen_test] == NONE_LABEL).mean()),
        "plain_known_accuracy": float((plain == np.asarray(gold))[known_mask].mean()),
        "flagged_unseen": float(flags[unseen_test].mean()),
        "flagged_known": float(flags[known_mask].mean()),
        "cascade": {**figures(list(final), gold, known), "escalated": float(escalate.mean())},
        "cascade_none_recall_unseen": float((final[unseen_test] == NONE_LABEL).mean()),
    }


def run(work: Path, target: float, threads: int) -> dict[str, Any]:
    """Every figure of the loop, as JSON-ready data."""
    split = json.loads((work / "split.json").read_text(encoding="utf-8"))
    unseen, known = set(split["unseen"]), split["known"]
    if not unseen:
        raise SystemExit(f"{work} teaches every unknown intent: make it with --teach-none 0")
    model, cache = work / "model", work / "scores"
    teacher = read_pairs(work / "teacher.csv")
    stream = [
        (r["text"], NONE_LABEL) for r in read_rows(DATA / "train.csv") if r["category"] in unseen
    ]
    score, held_scores = fitted_score(model, teacher, threads, cache)
    stream_scores, stream_states = scored(model, stream, threads, cache)
    flags = score.unfamiliar(stream_states)[1]
    sent = escalated(stream_scores, held_scores, target, flags)
    taught = [pair for pair, e in zip(stream, sent, strict=True) if e]

    loop = work / "loop"
    loop_model = loop / "model"
    if not (loop_model / "manifest.json").is_file():
        loop.mkdir(parents=True, exist_ok=True)
        write_pairs(loop / "teacher.csv", teacher + taught)
        shutil.rmtree(loop_model, ignore_errors=True)
        command = finetune_command(work, loop / "teacher.csv", loop_model)
        print("fine-tuning again with the frontier's answers:", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True)

    test = read_pairs(work / "test.csv")
    categories = [r["category"] for r in read_rows(DATA / "test.csv")]
    unseen_test = np.asarray([c in unseen for c in categories])
    return {
        "seed": split["seed"],
        "unseen_intents": len(unseen),
        "target": target,
        "stream": len(stream),
        "stream_flagged": float(flags.mean()),
        "stream_escalated": float(sent.mean()),
        "taught": len(taught),
        "unseen_test_queries": int(unseen_test.sum()),
        "before": measured(model, teacher, test, unseen_test, target, known, threads, cache),
        "after": measured(
            loop_model, teacher + taught, test, unseen_test, target, known, threads, cache
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--target", type=float, default=0.10, help="the policy's escalation target")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.work, args.target, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    pct = "{:.1%}".format
    print(
        f"seed {result['seed']}: a stream of {result['stream']} queries of "
        f"{result['unseen_intents']} intents nobody "
        f"taught; {pct(result['stream_flagged'])} flagged unfamiliar, "
        f"{pct(result['stream_escalated'])} escalated (target {pct(result['target'])}), "
        f"{result['taught']} answered none and taught"
    )
    rows = []
    for name in ("before", "after"):
        x = result[name]
        c = x["cascade"]
        rows.append(
            [name, pct(x["plain_none_recall_unseen"]), pct(x["flagged_unseen"]),
             pct(x["plain_known_accuracy"]), pct(x["flagged_known"]),
             pct(x["cascade_none_recall_unseen"]), pct(c["accuracy"]), pct(c["escalated"])]
        )  # fmt: skip
    print_table(
        ["model", "SLM none recall, new topics", "flagged, new topics", "SLM known acc.",
         "flagged, known", "cascade none recall, new topics", "cascade accuracy",
         "escalated"],
        rows,
    )  # fmt: skip
    print(f"test queries of the new topics: {result['unseen_test_queries']} (none in the stream)")


if __name__ == "__main__":
    main()
