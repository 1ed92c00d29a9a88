"""How fast documents get in and results get stored, on the real Postgres and Redis,
each against a per-document baseline measured in the same run:

producer  a JSONL file → ``read_records`` → ``submit_records``: documents inserted
          1,000 per transaction, SLM tasks of 32 ids published on one connection;
          against one INSERT, one commit and one task per document (``--baseline N``
          documents), and against parsing the file alone (the ceiling);
store     SLM predictions committed the way the worker commits them (insert the batch,
          move its documents, one transaction per 32), and in transactions of 1,000;
          against one transaction per prediction.

No worker runs: the queue only fills. Backpressure is lifted for the measurement.

    python -m bench.ingest --docs 100000 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from bench.queries import banking_queries
from bench.stack import ROOT, scratch_stack
from bench.table import print_table


def write_jsonl(path: Path, n: int) -> None:
    """``n`` BANKING77 test queries (cycled) with unique ids."""
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(banking_queries(n)):
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")


def timed(label: str, n: int, work: Callable[[], Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    return {"line": label, "n": n, "seconds": round(seconds, 3), "per_s": round(n / seconds, 1)}


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=5_000, help="Documents per baseline.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n, nb = args.docs, min(args.docs, args.baseline)
    folder = Path(tempfile.mkdtemp(prefix="shiftdown-ingest-"))
    path = folder / "docs.jsonl"
    write_jsonl(path, n)

    with scratch_stack(SHIFTDOWN_MAX_QUEUE_DEPTH=str(10**9)):
        import redis
        from sqlalchemy import select

        from bench.stack import BROKER
        from producers.readers import Record, read_records
        from producers.submit import create_run, submit_records
        from shiftdown.db import session_scope
        from shiftdown.schema import DocState, Document, Stage
        from shiftdown.settings import get_settings
        from shiftdown.taxonomy import Taxonomy
        from workers.app import TASK_SLM, app
        from workers.store import PredictionRow, insert_predictions, move_documents

        s = get_settings()
        taxonomy = Taxonomy.from_file(ROOT / "demo" / "banking77" / "categories.json")
        # The zero-shot base model: no adapter to load, and this measures no inference.
        runs = {key: create_run("ingest", taxonomy, None, key)[0] for key in "abc"}
        lines: list[dict[str, Any]] = []

        def parse() -> None:
            with path.open("rb") as f:
                for _ in read_records(f, "jsonl", path.name):
                    pass

        def submit(run_id: int) -> Callable[[], None]:
            def go() -> None:
                with path.open("rb") as f:
                    submit_records(run_id, read_records(f, "jsonl", path.name))

            return go

        def one_by_one() -> None:
            with path.open("rb") as f, app.producer_or_acquire() as producer:
                for r in islice(read_records(f, "jsonl", path.name), nb):
                    assert isinstance(r, Record)
                    with session_scope() as session:
                        doc = Document(run_id=runs["c"], external_id=r.external_id,
                                       line_no=r.line_no, text=r.text)  # fmt: skip
                        session.add(doc)
                        session.flush()
                        doc_id = doc.id
                    app.send_task(TASK_SLM, args=[[doc_id]], queue=s.slm_queue,
                                  producer=producer)  # fmt: skip

        lines.append(timed("producer: parse only (ceiling)", n, parse))
        lines.append(timed("producer: submit (bulk)", n, submit(runs["a"])))
        lines.append(timed("producer: per document (baseline)", nb, one_by_one))
        queued = redis.Redis.from_url(BROKER).llen(s.slm_queue)
        expected = -(-n // s.slm_batch_size) + nb
        assert queued == expected, f"{queued} messages on the queue, expected {expected}"
        # The second submission only fills documents for the store's bulk line.
        submit(runs["b"])()

        labels = taxonomy.names

        def rows_of(run_id: int) -> list[PredictionRow]:
            with session_scope() as session:
                ids = session.scalars(
                    select(Document.id).where(Document.run_id == run_id).order_by(Document.id)
                ).all()
            rng = random.Random(run_id)
            out = []
            for doc_id in ids:
                top = rng.sample(labels, s.store_top_k)
                out.append(PredictionRow(
                    document_id=doc_id, run_id=run_id, stage=Stage.SLM,
                    label=top[0], confidence=rng.random(), escalated=False,
                    distribution={lbl: round(rng.random(), 4) for lbl in top},
                    model="bench", model_version_id=None, latency_ms=60.0,
                    prompt_tokens=21, completion_tokens=0, cost_usd=0.0,
                ))  # fmt: skip
            return out

        def store(rows: list[PredictionRow], size: int) -> Callable[[], None]:
            def go() -> None:
                for batch in chunks(rows, size):
                    with session_scope() as session:
                        insert_predictions(session, batch)
                        move_documents(
                            session,
                            [r.document_id for r in batch],
                            [DocState.QUEUED],
                            state=DocState.CLASSIFIED,
                            final_stage=Stage.SLM,
                        )

            return go

        rows_a, rows_b, rows_c = rows_of(runs["a"]), rows_of(runs["b"]), rows_of(runs["c"])
        lines.append(timed(f"store: worker batches of {s.slm_batch_size}", n,
                           store(rows_a, s.slm_batch_size)))  # fmt: skip
        lines.append(timed("store: transactions of 1,000", n, store(rows_b, 1000)))
        lines.append(timed("store: per prediction (baseline)", nb, store(rows_c, 1)))

    base = {"producer": lines[2]["per_s"], "store": lines[5]["per_s"]}
    for line in lines:
        line["x_baseline"] = round(line["per_s"] / base[line["line"].split(":")[0]], 1)
    if args.json:
        print(json.dumps(lines, indent=2))
        return
    print(
        f"{n:,} BANKING77 queries; {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}; Postgres and Redis on loopback"
    )
    print_table(
        ["line", "n", "seconds", "per s", "x baseline"],
        [
            [x["line"], f"{x['n']:,}", f"{x['seconds']:.2f}", f"{x['per_s']:,.0f}",
             f"{x['x_baseline']:.1f}"]
            for x in lines
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
