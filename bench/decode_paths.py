"""The batched decode paths on the same test queries: the same labels, and how fast.

The demo model as it is served (adapter merged, ``SHIFTDOWN_SERVE_TYPE``) classifies the
BANKING77 test split (3,080 queries) with ``classify_many`` once per path: one batched
llama.cpp context (the path before), then the default (two contexts decoding at once
where there are two threads), and with ``--kv-layout streams`` one KV stream per
document. Each line gives accuracy, how many labels equal the first path's, the largest
difference in any label logit, and docs/s.

    python -m bench.decode_paths [--docs N] [--parallel 32] [--contexts 1 0]
        [--kv-layout unified] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.queries import banking_labelled
from bench.stack import ROOT
from bench.table import print_table
from bench.throughput import way_suffix
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.registry import load_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "banking77-lora")
    parser.add_argument("--docs", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--parallel", type=int, default=32, help="documents per decode")
    parser.add_argument("--task-size", type=int, default=128, help="documents per call")
    parser.add_argument(
        "--contexts", nargs="+", type=int, default=[1, 0], help="0: automatic (the default)"
    )
    parser.add_argument(
        "--kv-layout", nargs="+", choices=["unified", "streams"], default=["unified"]
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    docs = banking_labelled(args.docs, seed=None)
    texts = [text for text, _ in docs]
    gguf, adapter, manifest = load_model_dir(args.model)
    spec = ModelSpec(str(gguf), tuple(manifest.labels or ()), str(adapter), manifest)
    results: dict[str, dict[str, Any]] = {}
    first: tuple[list[str], np.ndarray] | None = None
    for layout in args.kv_layout:
        for contexts in args.contexts:
            options = RuntimeOptions(
                n_threads=args.threads,
                parallel=args.parallel,
                kv_layout=layout,
                decode_contexts=contexts,
            )
            clf = Classifier(spec, options)
            clf.classify_many(texts[:4])  # warm caches
            started = time.perf_counter()
            out = []
            for at in range(0, len(texts), args.task_size):
                out += clf.classify_many(texts[at : at + args.task_size])
            rate = len(texts) / (time.perf_counter() - started)
            labels = [r.label for r in out]
            logits = np.stack([r.logits for r in out])
            first = first or (labels, logits)
            name = f"classify_many{way_suffix(layout, contexts)}"
            results[name] = {
                "contexts": clf.contexts,
                "accuracy": sum(p == g for p, (_, g) in zip(labels, docs, strict=True)) / len(docs),
                "same_label": sum(a == b for a, b in zip(labels, first[0], strict=True)),
                "max_logit_diff": float(np.abs(logits - first[1]).max()),
                "docs_per_s": round(rate, 2),
            }
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
            del clf
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{len(docs)} BANKING77 test queries, {args.model}, {args.parallel} per decode")
    print_table(
        ["path", "contexts", "accuracy", "same label as first", "max logit diff", "docs/s"],
        [
            [
                name,
                str(x["contexts"]),
                f"{x['accuracy']:.2%}",
                f"{x['same_label']} of {len(docs)}",
                f"{x['max_logit_diff']:.2g}",
                f"{x['docs_per_s']:.2f}",
            ]
            for name, x in results.items()
        ],
    )


if __name__ == "__main__":
    main()
