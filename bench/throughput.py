"""Throughput of the SLM stage, four ways, on the same documents and model file:

1. limit     bare llama.cpp forward passes over exactly the token sequences the worker
             builds (document + answer cue after the cached instruction prefix),
             pre-tokenized, logits not read;
2. naive     one high-level ``Llama.create_completion`` per document (a few tokens
             generated, the label read back from the text), as a user would write it;
3. classify  the SLM worker's classify function alone (tokenizing, one forward pass,
             the distribution over every label);
4. pipeline  producer → Redis → a Celery SLM worker process → Postgres, from the first
             enqueue to the last committed prediction.

Each line reports docs/s, per-document p50/p95 latency, and its ratio to line 1.
Needs Redis and Postgres for line 4 (``--no-pipeline`` skips it).

    python bench/throughput.py --docs 300 [--model demo/banking77-lora] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.classifier import Classifier, ModelSpec, RuntimeOptions  # noqa: E402
from models.registry import load_model_dir  # noqa: E402


def stats(latencies_ms: list[float], wall_s: float) -> dict[str, float]:
    p50, p95 = np.percentile(latencies_ms, [50, 95])
    return {
        "docs_per_s": round(len(latencies_ms) / wall_s, 2),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
    }


def line_limit(clf: Classifier, texts: list[str]) -> dict[str, float]:
    llm = clf._llm
    prefix = len(clf._prefix)
    seqs = [clf._vocab.encode_document(t)[: clf._max_doc_tokens] + clf._suffix for t in texts]
    latencies = []
    start = time.perf_counter()
    for seq in seqs:
        t0 = time.perf_counter()
        llm.n_tokens = prefix
        llm.eval(seq)
        latencies.append((time.perf_counter() - t0) * 1000)
    return stats(latencies, time.perf_counter() - start)


def line_naive(
    spec: ModelSpec, clf: Classifier, texts: list[str], threads: int
) -> dict[str, float]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=spec.gguf_path,
        lora_path=spec.adapter_path,
        n_ctx=2048,
        n_threads=threads,
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
        out = llm.create_completion(prefix + text + suffix, max_tokens=4, temperature=0)
        answer = out["choices"][0]["text"].strip().split()  # type: ignore[index]
        by_code.get(answer[0] if answer else "")
        latencies.append((time.perf_counter() - t0) * 1000)
    return stats(latencies, time.perf_counter() - start)


def line_classify(clf: Classifier, texts: list[str]) -> dict[str, float]:
    latencies = []
    start = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        clf.classify(text)
        latencies.append((time.perf_counter() - t0) * 1000)
    return stats(latencies, time.perf_counter() - start)


def line_pipeline(
    model_ref: str, texts: list[str], threads: int, taxonomy: Path
) -> dict[str, float]:
    import psycopg
    import redis
    from sqlalchemy import func, select

    admin = os.environ.get("SHIFTDOWN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    broker = os.environ.get("SHIFTDOWN_TEST_REDIS", "redis://127.0.0.1:6379/14")
    name = f"shiftdown_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    redis.Redis.from_url(broker).flushdb()
    env = {
        **os.environ,
        "SHIFTDOWN_DATABASE_URL": url,
        "SHIFTDOWN_BROKER_URL": broker,
        "SHIFTDOWN_N_THREADS": str(threads),
        "SHIFTDOWN_TASK": "bench",
    }
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(key, None)
    os.environ.update({k: v for k, v in env.items() if k.startswith("SHIFTDOWN_")})
    import migrations
    from producers.readers import Record
    from producers.submit import create_run, submit_records
    from shiftdown.db import dispose_engines, session_scope
    from shiftdown.schema import Document, Prediction
    from shiftdown.settings import get_settings
    from shiftdown.taxonomy import Taxonomy
    from workers.app import configure

    get_settings.cache_clear()
    configure()
    migrations.upgrade(url)
    tax = Taxonomy.from_file(taxonomy)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-Q",
            "slm",
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def run(batch: list[str]) -> tuple[int, float]:
            run_id, queue = create_run("bench", tax, model_ref, "bench")
            t0 = time.time()
            submit_records(run_id, [Record(i + 1, str(i), t) for i, t in enumerate(batch)], queue)
            while True:
                with session_scope() as s:
                    done = s.scalar(select(func.count()).where(Prediction.run_id == run_id))
                if done == len(batch):
                    return run_id, t0
                time.sleep(0.5)  # polling competes with the worker for the 2 cores

        run(texts[:32])  # warm-up: the worker loads the model
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
        worker.terminate()
        worker.wait(timeout=30)
        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--model", default=str(ROOT / "demo" / "banking77-lora"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    taxonomy = ROOT / "demo" / "banking77" / "categories.json"
    with (ROOT / "demo" / "banking77" / "test.csv").open(newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    random.Random(0).shuffle(texts)
    texts = texts[: args.docs]
    labels = tuple(json.loads(taxonomy.read_text()))
    gguf, adapter, manifest = load_model_dir(Path(args.model))
    spec = ModelSpec(str(gguf), labels, str(adapter) if adapter else None, manifest)
    clf = Classifier(spec, RuntimeOptions(n_threads=args.threads))
    clf.classify(texts[0])  # warm caches

    results: dict[str, Any] = {"limit": line_limit(clf, texts)}
    results["naive"] = line_naive(spec, clf, texts, args.threads)
    results["classify"] = line_classify(clf, texts)
    if not args.no_pipeline:
        del clf  # the worker process gets the cores to itself
        results["pipeline"] = line_pipeline(args.model, texts, args.threads, taxonomy)
    base = results["limit"]["docs_per_s"]
    for line in results.values():
        line["ratio_to_limit"] = round(line["docs_per_s"] / base, 3)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.docs} BANKING77 test queries, model {args.model}, "
        f"{args.threads} threads, {os.cpu_count()} cores"
    )
    print(f"{'line':<10}{'docs/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'x limit':>10}")
    for name, line in results.items():
        print(
            f"{name:<10}{line['docs_per_s']:>10.2f}{line['p50_ms']:>10.1f}{line['p95_ms']:>10.1f}{line['ratio_to_limit']:>10.3f}"
        )


if __name__ == "__main__":
    main()
