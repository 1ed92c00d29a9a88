"""The host ceiling: how fast the SLM's own code path runs when the model costs next to
nothing, measured without a GPU.

It writes a tiny random-weight GGUF with SmolLM2's real tokenizer and vocabulary
(``bench/tiny_model.py``: one block of width 32) to a temporary folder and serves it the
way a worker serves a fine-tuned model. Its one block costs next to nothing, so each
rate is close to what host-side work allows: a ceiling that no GPU lifts. (Its output
layer still spans the whole 49,152-token vocabulary: on a CPU that product and the copy
of its rows are about 40 % of a batched decode, work a GPU does on the device.)

Lines, on BANKING77 test queries (repeated to ``--docs``):

1. classify        ``Classifier.classify``, one document per decode: the baseline, the
                   worker's path before batched decoding;
2. classify_many   ``Classifier.classify_many`` with ``--parallel`` documents per decode,
                   over tasks of ``--task-size`` documents, once per KV layout of
                   ``--kv-layout`` (unified: one cache for the whole decode; streams:
                   one stream per document, ``models.streams``, its lines named
                   ``..._streams``) and per number of batched contexts of
                   ``--contexts`` (automatic: the default, two decodes at once on two
                   threads; 1: one context, the path before, lines named
                   ``..._contexts1``); the ways take turns for ``--rounds``
                   rounds and each line is its median round;
3. pipeline        producer → Redis → one Celery worker (threads pool, ``--threads``
                   tasks in flight sharing one model; ``--pool prefork``: one task at a
                   time) → Postgres, from the first enqueue to the last committed
                   prediction, once per way.

Each line: docs/s, per-document p50/p95 latency, and the ratio to line 1. Needs Redis
and Postgres for line 3 (``--no-pipeline`` skips it), as ``bench/throughput.py`` does.

    python -m bench.host_ceiling [--docs N] [--parallel 32] [--task-size 128]
        [--kv-layout unified streams] [--contexts 1 0] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.queries import banking_queries
from bench.stack import ROOT
from bench.table import print_lines
from bench.throughput import (
    contexts_suffix,
    line_classify,
    line_classify_many,
    line_pipeline,
    way_suffix,
)
from bench.tiny_model import write_tiny_gguf
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.registry import read_manifest


def measure(args: argparse.Namespace, model: Path) -> dict[str, dict[str, Any]]:
    """Every line on ``model``, printed to stderr as each ends."""
    taxonomy = ROOT / "demo" / "banking77" / "categories.json"
    labels = tuple(json.loads(taxonomy.read_text(encoding="utf-8")))
    texts = banking_queries(args.docs, seed=None)
    spec = ModelSpec(str(model), labels, None, read_manifest(model))
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, line: dict[str, Any]) -> None:
        results[name] = line
        print(f"{name}: {line['docs_per_s']:.0f} docs/s", file=sys.stderr, flush=True)

    ways = {
        way_suffix(layout, contexts): RuntimeOptions(
            n_threads=args.threads_llama,
            n_gpu_layers=args.gpu_layers,
            parallel=args.parallel,
            decode_tokens=args.decode_tokens,
            kv_layout=layout,
            decode_contexts=contexts,
        )
        for layout in args.kv_layout
        for contexts in args.contexts
    }
    loaded = {suffix: Classifier(spec, options) for suffix, options in ways.items()}
    for clf in loaded.values():
        clf.classify_many(texts[: args.parallel])  # warm caches
    record("classify", line_classify(next(iter(loaded.values())), texts[: min(len(texts), 2000)]))
    # The ways take turns, round after round, and each keeps its median round: this
    # machine's speed drifts by more than the gaps between them over a run.
    rounds: dict[str, list[dict[str, Any]]] = {suffix: [] for suffix in loaded}
    for _ in range(args.rounds):
        for suffix, clf in loaded.items():
            rounds[suffix].append(line_classify_many(clf, texts, args.task_size))
    for suffix, lines in rounds.items():
        lines.sort(key=lambda line: line["docs_per_s"])
        record(f"classify_many{suffix}", lines[len(lines) // 2])
    del loaded, clf  # the worker process gets the cores to itself
    for suffix, options in ways.items() if not args.no_pipeline else ():
        record(
            f"pipeline{suffix}",
            line_pipeline(
                str(model),
                texts,
                options,
                taxonomy,
                processes=args.threads if args.pool == "threads" else 1,
                pool=args.pool,
                task_size=args.task_size,
            ),
        )
    base = results["classify"]["docs_per_s"]
    for line in results.values():
        line["ratio_to_classify"] = round(line["docs_per_s"] / base, 2)
    for name, line in results.items():
        # The default path against one context, in the same run.
        one = results.get(name + contexts_suffix(1))
        if one is not None and one is not line:
            line["x_one_context"] = round(line["docs_per_s"] / one["docs_per_s"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=32, help="documents per decode")
    parser.add_argument("--task-size", type=int, default=128, help="documents per SLM task")
    parser.add_argument(
        "--decode-tokens", type=int, default=None, help="tokens per decode (unset: the default)"
    )
    parser.add_argument(
        "--kv-layout",
        nargs="+",
        choices=["unified", "streams"],
        default=["unified", "streams"],
        help="the KV layouts measured, each in its own lines, in this run",
    )
    parser.add_argument(
        "--contexts",
        nargs="+",
        type=int,
        default=[1, 0],
        help="batched llama.cpp contexts measured, each in its own lines (0: automatic, the "
        "default path, lines without a suffix; 1: one context, lines named _contexts1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="classify_many rounds per way, taken in turns; each line is its median round",
    )
    parser.add_argument("--threads", type=int, default=4, help="worker task threads")
    parser.add_argument(
        "--pool",
        choices=["threads", "prefork"],
        default="threads",
        help="the pipeline worker's pool (prefork: one process, one task at a time)",
    )
    parser.add_argument(
        "--threads-llama", type=int, default=os.cpu_count() or 1, help="llama.cpp threads"
    )
    parser.add_argument("--gpu-layers", type=int, default=0, help="-1: offload every layer")
    parser.add_argument(
        "--width",
        type=int,
        default=32,
        help="the tiny model's width, one attention head (CUDA's flash attention needs a "
        "head of 64 or more: bench/gpu.sh passes 64)",
    )
    parser.add_argument(
        "--tokenizer-from",
        type=Path,
        default=None,
        help="GGUF whose tokenizer the tiny model takes (default: the bundled SmolLM2)",
    )
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shiftdown-tiny-") as folder:
        model = write_tiny_gguf(Path(folder) / "tiny.gguf", args.tokenizer_from, width=args.width)
        results = measure(args, model)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"host ceiling: tiny random-weight model, {args.docs} documents, {args.parallel} "
        f"per decode, tasks of {args.task_size}, {os.cpu_count()} cores"
    )
    print_lines(results, "ratio_to_classify", "classify", digits=0)


if __name__ == "__main__":
    main()
