"""Open-set BANKING77, the standard open intent classification setup: a seeded share of
the labels is held out as unknown, the model is trained on the rest, and the test split's
queries of unknown labels must come out as "none".

The teacher set is the training split as a teacher would label it for an open-set task:
the known labels' queries with their label, the unknown labels' queries with the none
outcome (``shiftdown.taxonomy.NONE_LABEL``). That is the stand-in frontier's answer for
them, and what the cascade's frontier calls become on a real open-set task.

    python -m bench.open_set_data --out DIR [--seed 0] [--known 0.75] [--teach-none 1.0]

writes DIR/taxonomy.json (the known labels, open_set: true), DIR/teacher.csv,
DIR/test.csv (every test query, its label or "none") and DIR/split.json (which labels
are unknown), then prints the ``shiftdown finetune`` command that trains on them.

``--teach-none F`` keeps the training queries of only a seeded share F of the unknown
labels (answered none) and drops the rest from training: the test split's queries of the
dropped labels are then topics the model never saw, as a new topic in a stream would be.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
from collections.abc import Collection
from pathlib import Path

from shiftdown.taxonomy import NONE_LABEL

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo" / "banking77"


def split_labels(labels: list[str], known_frac: float, seed: int) -> tuple[list[str], list[str]]:
    """The known and unknown labels: a seeded sample of ``1 - known_frac`` of them is
    unknown. Both keep the taxonomy's order."""
    n_unknown = round(len(labels) * (1 - known_frac))
    unknown = set(random.Random(seed).sample(sorted(labels), n_unknown))
    return [x for x in labels if x not in unknown], [x for x in labels if x in unknown]


def relabel(
    rows: list[dict[str, str]], unknown: set[str], dropped: Collection[str] = ()
) -> list[tuple[str, str]]:
    """(text, label) with every unknown label's query answered "none", and the queries
    of ``dropped`` labels left out."""
    return [
        (row["text"], NONE_LABEL if row["category"] in unknown else row["category"])
        for row in rows
        if row["category"] not in dropped
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a BANKING77 CSV (text, category)."""
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of a text,label CSV (``write_pairs``)."""
    with path.open(encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    """A text,label CSV."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(pairs)


def prepare(
    out: Path,
    seed: int = 0,
    known_frac: float = 0.75,
    teach_none: float = 1.0,
    data: Path = DATA,
) -> dict[str, object]:
    """Write the split's files into ``out``; returns split.json's content."""
    labels = json.loads((data / "categories.json").read_text(encoding="utf-8"))
    known, unknown = split_labels(labels, known_frac, seed)
    unseen = [] if teach_none >= 1 else split_labels(unknown, teach_none, seed + 1)[1]
    out.mkdir(parents=True, exist_ok=True)
    (out / "taxonomy.json").write_text(
        json.dumps({"labels": known, "open_set": True}, indent=1) + "\n", encoding="utf-8"
    )
    train = relabel(read_rows(data / "train.csv"), set(unknown), set(unseen))
    write_pairs(out / "teacher.csv", train)
    write_pairs(out / "test.csv", relabel(read_rows(data / "test.csv"), set(unknown)))
    split = {
        "seed": seed,
        "known_frac": known_frac,
        "known": known,
        "unknown": unknown,
        # Unknown labels whose queries the model never saw in training.
        "unseen": unseen,
    }
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    return split


def finetune_command(
    out: Path, teacher: Path | None = None, model: Path | None = None
) -> list[str]:
    """The ``shiftdown finetune`` command that trains the open-set model of ``out``
    (on another teacher set, into another folder, when given)."""
    return [
        "shiftdown", "finetune", "--data", str(teacher or out / "teacher.csv"),
        "--taxonomy", str(out / "taxonomy.json"), "--out", str(model or out / "model"),
        "--epochs", "1",
        # bench.open_set fits and compares every unfamiliarity score itself.
        "--familiarity", "off",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--known", type=float, default=0.75, help="share of known labels")
    parser.add_argument(
        "--teach-none", type=float, default=1.0, help="share of unknown labels taught as none"
    )
    args = parser.parse_args()
    split = prepare(args.out, args.seed, args.known, args.teach_none)
    print(
        f"{len(split['known'])} known labels, {len(split['unknown'])} unknown "  # type: ignore[arg-type]
        f"({len(split['unseen'])} never seen in training; seed {args.seed})"  # type: ignore[arg-type]
    )
    print(shlex.join(finetune_command(args.out)))


if __name__ == "__main__":
    main()
