"""Throughput of the SLM stage, four ways, on the same documents and model file:

1. limit     bare llama.cpp forward passes over exactly the token sequences the worker
             builds (document + answer cue after the cached instruction prefix),
             pre-tokenized, logits not read;
2. naive     one high-level ``Llama.create_completion`` per document, as a user would
             write it to get what the worker's decision needs: the label read back from
             the generated text and its probability from ``logprobs`` (which needs
             ``logits_all=True``); ``naive_text_only`` drops the probability;
3. classify  the SLM worker's classify function alone (tokenizing, one forward pass,
             the distribution over every label), on the model as it is served
             (``--serve-type``, default ``SHIFTDOWN_SERVE_TYPE``: a model directory's
             adapter merged into one GGUF); for a model with an adapter,
             ``classify_adapter`` is the same with the base + adapter applied at run
             time, each with its accuracy on the same documents; ``--parallel N`` adds
             ``classify_many`` with N documents per decode, in tasks of ``--task-size``;
4. pipeline  producer → Redis → a Celery SLM worker → Postgres, from the first enqueue
             to the last committed prediction (``--pool threads``: one model shared by
             ``--worker-threads`` tasks in flight; ``--scale``: also with two worker
             processes sharing the threads).

Each line reports docs/s, per-document p50/p95 latency, and its ratio to line 1.
Needs Redis and Postgres for line 4 (``--no-pipeline`` skips it).

    python -m bench.throughput --docs 300 [--model demo/banking77-lora] [--scale]
        [--parallel N[,N...]] [--task-size 32] [--contexts 1,0] [--pool threads] [--naive-docs N]
        [--gpu-layers -1] [--serve-type q8_0] [--no-adapter-line] [--json]

``bench/gpu.sh`` builds llama-cpp-python with CUDA and runs this on a GPU, the pipeline
included; ``bench/host_ceiling.py`` runs lines 3 and 4 on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.queries import banking_labelled
from bench.stack import ROOT
from bench.table import print_lines
from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.registry import load_model_dir
from shiftdown.settings import SERVE_TYPES, get_settings

# Line names per KV layout: the default layout's lines keep the names scripts read.
LAYOUT_SUFFIX = {"unified": "", "streams": "_streams"}


def contexts_suffix(contexts: int) -> str:
    """Line name suffix for a number of batched contexts: none for the automatic default
    (``SHIFTDOWN_DECODE_CONTEXTS=0``), ``_contexts1`` for the one-context path, etc."""
    return f"_contexts{contexts}" if contexts else ""


def way_suffix(layout: str, contexts: int) -> str:
    """Line name suffix for a KV layout and a number of batched contexts."""
    return LAYOUT_SUFFIX[layout] + contexts_suffix(contexts)


def parse_contexts(value: str) -> list[int]:
    """``--contexts``: a comma-separated list of context counts, 0 for automatic."""
    return [int(n) for n in value.split(",")]


def stats(latencies_ms: list[float], wall_s: float) -> dict[str, float]:
    """docs/s over ``wall_s`` and the latencies' p50 and p95."""
    import numpy as np

    p50, p95 = np.percentile(latencies_ms, [50, 95])
    return {
        "docs_per_s": round(len(latencies_ms) / wall_s, 2),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
    }


def line_limit(clf: Classifier, texts: list[str]) -> dict[str, float]:
    llm = clf._llm
    prefix = len(clf._prefix)
    # Exactly the worker's token sequences: its own truncation, then the answer cue.
    seqs = [clf.document_tokens(t)[0] + clf._suffix for t in texts]
    latencies = []
    start = time.perf_counter()
    for seq in seqs:
        t0 = time.perf_counter()
        llm.n_tokens = prefix
        llm.eval(seq)
        latencies.append((time.perf_counter() - t0) * 1000)
    return stats(latencies, time.perf_counter() - start)


def line_naive(
    clf: Classifier, texts: list[str], options: RuntimeOptions, confidence: bool
) -> dict[str, float]:
    """One ``create_completion`` per document, the label read back from its text; with
    ``confidence``, also its probability from ``logprobs`` (which needs ``logits_all``),
    the naive way to get what the worker's decision needs."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=clf.served_path,
        lora_path=clf.served_adapter,
        n_ctx=2048,
        n_threads=options.n_threads,
        n_gpu_layers=options.n_gpu_layers,
        logits_all=confidence,
        verbose=False,
    )
    prefix, suffix = clf.template.split(clf.labels)
    by_code = {
        llm.detokenize([c]).decode("utf-8", "replace").strip(): lbl
        for c, lbl in zip(clf.codes, clf.labels, strict=True)
    }
    latencies = []
    start = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        out: Any = llm.create_completion(
            prefix + text + suffix, max_tokens=4, temperature=0, logprobs=1 if confidence else None
        )
        choice = out["choices"][0]
        answer = choice["text"].strip().split()
        by_code.get(answer[0] if answer else "")
        if confidence:
            math.exp(choice["logprobs"]["token_logprobs"][0])
        latencies.append((time.perf_counter() - t0) * 1000)
    return stats(latencies, time.perf_counter() - start)


def line_classify(
    clf: Classifier, texts: list[str], gold: list[str] | None = None
) -> dict[str, float]:
    """classify one document at a time, and its accuracy against ``gold`` when given."""
    latencies = []
    predicted = []
    start = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        predicted.append(clf.classify(text).label)
        latencies.append((time.perf_counter() - t0) * 1000)
    line = stats(latencies, time.perf_counter() - start)
    if gold is not None:
        hits = sum(p == g for p, g in zip(predicted, gold, strict=True))
        line["accuracy"] = round(hits / len(texts), 4)
    return line


def line_classify_many(clf: Classifier, texts: list[str], per_task: int) -> dict[str, float]:
    """``classify_many`` over the worker's task-sized batches; a document's latency is
    the wall time of the batch it was in."""
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(texts), per_task):
        t0 = time.perf_counter()
        batch = texts[i : i + per_task]
        clf.classify_many(batch)
        latencies += [(time.perf_counter() - t0) * 1000] * len(batch)
    return stats(latencies, time.perf_counter() - start)


def line_pipeline(
    model_ref: str,
    texts: list[str],
    options: RuntimeOptions,
    taxonomy: Path,
    processes: int = 1,
    pool: str = "prefork",
    task_size: int = 32,
    deadline_s: float = 600.0,
) -> dict[str, float]:
    """Producer → Redis → one Celery worker → Postgres, first enqueue to last committed
    prediction. ``prefork``: ``processes`` pool processes sharing ``threads`` between
    them; ``threads``: ``processes`` task threads sharing one model (and its decodes)."""
    from sqlalchemy import func, select

    from bench.stack import scratch_stack, start_worker, stop_worker

    per_process = max(1, (options.n_threads or 1) // (processes if pool == "prefork" else 1))
    with scratch_stack(
        SHIFTDOWN_N_THREADS=str(per_process),
        SHIFTDOWN_N_GPU_LAYERS=str(options.n_gpu_layers),
        SHIFTDOWN_PARALLEL=str(options.parallel),
        SHIFTDOWN_KV_LAYOUT=options.kv_layout,
        SHIFTDOWN_DECODE_CONTEXTS=str(options.decode_contexts),
        SHIFTDOWN_SERVE_TYPE=options.serve_type,
        SHIFTDOWN_SLM_BATCH_SIZE=str(task_size),
        SHIFTDOWN_TASK="bench",
    ) as env:
        from producers.readers import Record
        from producers.submit import create_run, submit_records
        from shiftdown.db import session_scope
        from shiftdown.schema import Document, Prediction
        from shiftdown.taxonomy import Taxonomy

        tax = Taxonomy.from_file(taxonomy)
        worker = start_worker(env, processes, pool=pool)
        try:

            def run(batch: list[str]) -> tuple[int, float]:
                run_id, queue = create_run("bench", tax, model_ref, "bench")
                t0 = time.time()
                records = [Record(i + 1, str(i), t) for i, t in enumerate(batch)]
                submit_records(run_id, records, queue)
                deadline = time.time() + deadline_s
                while time.time() < deadline:
                    with session_scope() as s:
                        done = s.scalar(select(func.count()).where(Prediction.run_id == run_id))
                    if done == len(batch):
                        return run_id, t0
                    time.sleep(0.5)  # polling competes with the worker for the cores
                raise TimeoutError(f"the pipeline did not settle {len(batch)} in {deadline_s} s")

            # Warm-up: every pool process loads the model on its first task.
            run(texts[: task_size * processes])
            run_id, t0 = run(texts)
            with session_scope() as s:
                rows = s.execute(
                    select(Document.created_at, Prediction.created_at)
                    .join(Prediction, Prediction.document_id == Document.id)
                    .where(Document.run_id == run_id)
                ).all()
            last = max(p for _, p in rows).timestamp()
            latencies = [(p - d).total_seconds() * 1000 for d, p in rows]
            return stats(latencies, last - t0)
        finally:
            stop_worker(worker)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=300, help="(test queries repeat past 3,080)")
    parser.add_argument("--model", default=str(ROOT / "demo" / "banking77-lora"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument(
        "--single-docs",
        type=int,
        default=None,
        help="Documents of the one-at-a-time lines, limit and classify (default: all); "
        "on a GPU they run at a few hundred a second.",
    )
    parser.add_argument(
        "--naive-docs",
        type=int,
        default=None,
        help="Documents of the naive lines (default: all; 0 skips them). With logits_all "
        "on a GPU they take minutes for a few thousand.",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="Also run the pipeline with two worker processes sharing the threads.",
    )
    parser.add_argument(
        "--parallel",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[1],
        help="Also measure classify_many with this many documents per decode, in tasks of "
        "at least --task-size and at least as many (a comma-separated list measures each; "
        "the pipeline runs with the last).",
    )
    parser.add_argument("--task-size", type=int, default=32, help="documents per SLM task")
    parser.add_argument(
        "--kv-layout",
        type=lambda v: v.split(","),
        default=["unified"],
        help="KV layouts of the batched lines and the pipeline, comma-separated: unified "
        "(one cache per decode) and/or streams (one per document); each gets its own lines, "
        "named with a _streams suffix for streams.",
    )
    parser.add_argument(
        "--contexts",
        type=parse_contexts,
        default=[0],
        help="Batched llama.cpp contexts of the batched lines and the pipeline, "
        "comma-separated (SHIFTDOWN_DECODE_CONTEXTS; 0: automatic); each but 0 gets its own "
        "lines, named with a _contextsN suffix: 1,0 measures one context against the default.",
    )
    parser.add_argument(
        "--pool",
        choices=["prefork", "threads"],
        default="prefork",
        help="The pipeline worker's pool: threads shares one model between --worker-threads "
        "tasks in flight (the GPU worker).",
    )
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--gpu-layers", type=int, default=0, help="-1: offload every layer.")
    parser.add_argument(
        "--serve-type",
        choices=SERVE_TYPES,
        default=get_settings().serve_type,
        help="Form a model with an adapter is served in (default: SHIFTDOWN_SERVE_TYPE).",
    )
    parser.add_argument(
        "--no-adapter-line",
        action="store_true",
        help="Skip classify_adapter, the base + adapter applied at run time.",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if set(args.kv_layout) - {"unified", "streams"}:
        parser.error(f"--kv-layout: unified and/or streams, not {','.join(args.kv_layout)}")

    taxonomy = ROOT / "demo" / "banking77" / "categories.json"
    labelled = banking_labelled(args.docs)
    texts = [text for text, _ in labelled]
    gold = [label for _, label in labelled]
    labels = tuple(json.loads(taxonomy.read_text()))
    gguf, adapter, manifest = load_model_dir(Path(args.model))
    spec = ModelSpec(str(gguf), labels, str(adapter) if adapter else None, manifest)
    options = RuntimeOptions(
        n_threads=args.threads, n_gpu_layers=args.gpu_layers, serve_type=args.serve_type
    )
    clf = Classifier(spec, options)
    clf.classify(texts[0])  # warm caches

    results: dict[str, Any] = {}

    def record(name: str, line: dict[str, Any]) -> None:
        # Each line as it ends, on stderr: a run cut short (a lent GPU's time) keeps those.
        results[name] = line
        print(f"{name}: {line['docs_per_s']:.2f} docs/s", file=sys.stderr, flush=True)

    single = texts[: args.single_docs] if args.single_docs else texts
    record("limit", line_limit(clf, single))
    naive = texts[: args.naive_docs] if args.naive_docs is not None else texts
    if naive:
        record("naive", line_naive(clf, naive, options, confidence=True))
        record("naive_text_only", line_naive(clf, naive, options, confidence=False))
    n_single = len(single)
    record("classify", line_classify(clf, single, gold[:n_single]))
    if adapter is not None and args.serve_type != "adapter" and not args.no_adapter_line:
        as_trained = Classifier(spec, replace(options, serve_type="adapter"))
        as_trained.classify(texts[0])
        record("classify_adapter", line_classify(as_trained, single, gold[:n_single]))
        del as_trained
    ways = [(layout, n) for layout in args.kv_layout for n in args.contexts]
    for layout, contexts in ways:
        suffix = way_suffix(layout, contexts)
        for parallel in (n for n in args.parallel if n > 1):
            del clf
            options = replace(
                options, parallel=parallel, kv_layout=layout, decode_contexts=contexts
            )
            clf = Classifier(spec, options)
            clf.classify_many(texts[:4])
            per_task = max(args.task_size, parallel)
            line = line_classify_many(clf, texts, per_task)
            record(f"classify_parallel_{parallel}{suffix}", line)
    if not args.no_pipeline:
        del clf  # the worker process gets the cores to itself
        threads = args.worker_threads if args.pool == "threads" else 1
        for layout, contexts in ways:
            line = line_pipeline(
                args.model,
                texts,
                replace(options, kv_layout=layout, decode_contexts=contexts),
                taxonomy,
                threads,
                args.pool,
                args.task_size,
            )
            record(f"pipeline{way_suffix(layout, contexts)}", line)
        if args.scale:
            record(
                "pipeline_2_processes",
                line_pipeline(args.model, texts, options, taxonomy, 2, "prefork", args.task_size),
            )
    base = results["limit"]["docs_per_s"]
    for line in results.values():
        line["ratio_to_limit"] = round(line["docs_per_s"] / base, 3)
    if "naive" in results:
        # The target ratio: the worker's function against the naive way to the same answer.
        results["classify"]["ratio_to_naive"] = round(
            results["classify"]["docs_per_s"] / results["naive"]["docs_per_s"], 2
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.docs} BANKING77 test queries, model {args.model} (served as "
        f"{args.serve_type if adapter else 'it is'}), {args.threads} threads, "
        f"{os.cpu_count()} cores"
    )
    print_lines(results, "ratio_to_limit", "limit")
    for name, line in results.items():
        if "accuracy" in line:
            print(f"{name} accuracy: {line['accuracy']:.1%}")
    if "classify_adapter" in results:
        served, as_trained = results["classify"], results["classify_adapter"]
        print(
            f"served {args.serve_type} / base + adapter: "
            f"{served['docs_per_s'] / as_trained['docs_per_s']:.2f} x"
        )
    if "naive" in results:
        print(f"classify / naive: {results['classify']['ratio_to_naive']:.2f} x")


if __name__ == "__main__":
    main()
