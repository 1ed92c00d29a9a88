"""Memory of an SLM worker process over a long run: ``--docs`` BANKING77 queries through
producer → Redis → one Celery worker process → Postgres, the pool process's resident
set sampled every ``--every`` seconds, against the size of the model files it loads.

    python -m bench.memory --docs 20000 [--model demo/banking77-lora] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.queries import banking_queries
from bench.stack import ROOT, scratch_stack, start_worker, stop_worker
from bench.table import print_table

MB = 1024 * 1024


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Celery's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses: the ppid follows the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--model", default=str(ROOT / "demo" / "banking77-lora"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--every", type=float, default=5.0, help="Seconds between samples.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    texts = banking_queries()

    from models.registry import load_model_dir

    gguf, adapter, _ = load_model_dir(Path(args.model))
    model_mb = sum(p.stat().st_size for p in (gguf, adapter) if p) / MB
    with scratch_stack(SHIFTDOWN_N_THREADS=str(args.threads), SHIFTDOWN_TASK="memory") as env:
        from sqlalchemy import func, select

        from producers.readers import Record
        from producers.submit import create_run, submit_records
        from shiftdown.db import session_scope
        from shiftdown.schema import Prediction
        from shiftdown.taxonomy import Taxonomy

        tax = Taxonomy.from_file(ROOT / "demo" / "banking77" / "categories.json")
        worker = start_worker(env, 1)
        samples: list[dict[str, Any]] = []
        try:
            run_id, queue = create_run("memory", tax, args.model, "memory")
            records = [Record(i + 1, str(i), texts[i % len(texts)]) for i in range(args.docs)]
            t0 = time.monotonic()
            submit_records(run_id, records, queue)
            done = 0
            while done < args.docs:
                time.sleep(args.every)
                with session_scope() as s:
                    done = int(
                        s.scalar(select(func.count()).where(Prediction.run_id == run_id)) or 0
                    )
                pool = children(worker.pid)
                sizes = [r for r in map(rss_mb, pool) if r is not None]
                rss = round(max(sizes), 1) if sizes else None
                samples.append({"s": round(time.monotonic() - t0, 1), "done": done, "rss_mb": rss})
                if worker.poll() is not None:
                    raise RuntimeError("the worker exited")
            elapsed = time.monotonic() - t0
        finally:
            stop_worker(worker)

    measured = [x for x in samples if x["rss_mb"] is not None and x["done"] > 0]
    first, peak = measured[0], max(measured, key=lambda x: x["rss_mb"])
    result = {
        "docs": args.docs,
        "elapsed_s": round(elapsed, 1),
        "docs_per_s": round(args.docs / elapsed, 2),
        "model_files_mb": round(model_mb, 1),
        "rss_first_mb": first["rss_mb"],
        "rss_peak_mb": peak["rss_mb"],
        "rss_last_mb": measured[-1]["rss_mb"],
        "growth_mb": round(measured[-1]["rss_mb"] - first["rss_mb"], 1),
        "limit_mb": round(model_mb + 300, 1),
        "within_limit": peak["rss_mb"] <= model_mb + 300,
        "samples": samples,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.docs:,} documents, model {args.model} ({model_mb:.1f} MB of files), "
          f"{args.threads} threads, {result['docs_per_s']} docs/s")  # fmt: skip
    step = max(1, len(measured) // 10)
    print_table(
        ["seconds", "documents", "RSS MB"],
        [[f"{x['s']:.0f}", f"{x['done']:,}", f"{x['rss_mb']:.1f}"]
         for x in [*measured[::step], measured[-1]]],
    )  # fmt: skip
    print(
        f"pool process RSS: first {first['rss_mb']:.1f} MB, peak {peak['rss_mb']:.1f} MB, "
        f"last {measured[-1]['rss_mb']:.1f} MB; limit (model + 300 MB) {model_mb + 300:.1f} MB: "
        + ("within" if result["within_limit"] else "OVER")
    )


if __name__ == "__main__":
    main()
