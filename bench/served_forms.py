"""Each form the demo model can be served in, on the same test queries: the base GGUF
plus its LoRA adapter applied by llama.cpp at run time, and the adapter merged into one
GGUF of each llama.cpp type (``models.merge``, no torch).

For each form: the merge's seconds (made afresh, not from the cache), the file's size,
accuracy, agreement with the adapter's labels (the same label for the same query), and
docs/s of the worker's classify, one document at a time. ``--docs`` defaults to the whole
test split (3,080 queries); the same seeded order for every form.

    python -m bench.served_forms [--docs 3080] [--forms adapter,f16,q8_0,...]
        [--model demo/banking77-lora] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.queries import banking_labelled
from bench.stack import ROOT
from bench.table import print_table
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.merge import merge
from models.registry import load_model_dir
from shiftdown.settings import SERVE_TYPES


def measure(
    spec: ModelSpec, options: RuntimeOptions, docs: list[tuple[str, str]]
) -> tuple[list[str], float]:
    """The labels classify gives ``docs``, and its docs/s (after one warm-up document)."""
    clf = Classifier(spec, options)
    clf.classify(docs[0][0])
    start = time.perf_counter()
    labels = [clf.classify(text).label for text, _ in docs]
    return labels, len(docs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=None, help="(default: all 3,080)")
    parser.add_argument("--forms", default=",".join(SERVE_TYPES))
    parser.add_argument("--model", default=str(ROOT / "demo" / "banking77-lora"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    forms = args.forms.split(",")
    docs = banking_labelled(args.docs)
    base, adapter, manifest = load_model_dir(Path(args.model), as_trained=True)
    if adapter is None:
        parser.error(f"{args.model} has no adapter")
    labels = tuple(manifest.labels or ())
    options = RuntimeOptions(n_threads=args.threads, serve_type="adapter")
    results: dict[str, dict[str, Any]] = {}
    reference: list[str] | None = None
    with tempfile.TemporaryDirectory(prefix="served-forms-") as scratch:
        for form in ["adapter", *(f for f in forms if f != "adapter")]:
            line: dict[str, Any] = {}
            if form == "adapter":
                spec = ModelSpec(str(base), labels, str(adapter), manifest)
                line["mib"] = round(base.stat().st_size / 2**20 + adapter.stat().st_size / 2**20)
            else:
                path = Path(scratch) / f"{form}.gguf"
                started = time.perf_counter()
                merge(base, adapter, path, form, args.threads)
                line["merge_s"] = round(time.perf_counter() - started, 1)
                line["mib"] = round(path.stat().st_size / 2**20)
                spec = ModelSpec(str(path), labels, None, manifest)
            predicted, rate = measure(spec, options, docs)
            reference = reference or predicted
            line["docs_per_s"] = round(rate, 2)
            line["accuracy"] = round(
                sum(p == gold for p, (_, gold) in zip(predicted, docs, strict=True)) / len(docs), 4
            )
            line["agreement"] = round(
                sum(p == r for p, r in zip(predicted, reference, strict=True)) / len(docs), 4
            )
            as_trained = results["adapter"]["docs_per_s"] if results else rate
            line["x_adapter"] = round(rate / as_trained, 2)
            results[form] = line
            print(f"{form}: {line}", file=sys.stderr, flush=True)
            if form != "adapter":
                os.unlink(Path(scratch) / f"{form}.gguf")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{len(docs)} BANKING77 test queries, {args.model}, {args.threads} threads")
    print_table(
        ["form", "accuracy", "same label as adapter", "docs/s", "x adapter", "MiB", "merge s"],
        [
            [
                form,
                f"{x['accuracy']:.1%}",
                f"{x['agreement']:.1%}",
                f"{x['docs_per_s']:.2f}",
                f"{x['x_adapter']:.2f}",
                str(x["mib"]),
                str(x.get("merge_s", "")),
            ]
            for form, x in results.items()
        ],
    )


if __name__ == "__main__":
    main()
