"""Circuit breakers per worker process against a frontier that is down: how many calls N
frontier processes make to it, and how soon every escalation waits parked, measured
through real Celery workers, Redis, Postgres and the loopback stand-in answering 503.

A breaker per process costs the down endpoint each process's own run of failures before
it opens, then one probe per process per cool-down; a breaker shared through Redis
would cost one run and one probe. The table gives both, the shared one as that floor
(threshold + probes), against what each process count really made.

    python -m bench.breaker_processes [--processes 1 2 4 8] [--docs 400] [--hold 60]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.scripted_server import ScriptedServer
from bench.stack import scratch_stack, start_worker, stop_worker
from bench.table import print_table

FAILURES = 5
COOLDOWN_S = 5.0


def _escalated_run(n: int, prefix: str = "q") -> list[int]:
    """``n`` documents written escalated, as an SLM worker leaves them."""
    from sqlalchemy import select

    from shiftdown.db import session_scope
    from shiftdown.schema import DocState, Document, ModelVersion, Run, Task
    from shiftdown.taxonomy import Taxonomy

    taxonomy = Taxonomy.from_data(["card_arrival", "exchange_rate", "pin_blocked"])
    with session_scope() as s:
        version = s.scalar(select(ModelVersion).where(ModelVersion.task_name == "b"))
        if version is None:
            s.add(
                Task(
                    name="b", taxonomy=taxonomy.to_data(), taxonomy_hash=taxonomy.hash, threshold=1
                )
            )
            s.flush()
            version = ModelVersion(task_name="b", version=1, gguf_path="m.gguf", manifest={})
            s.add(version)
            s.flush()
        run = Run(task_name="b", model_version_id=version.id, threshold=1.0, source=prefix)
        s.add(run)
        s.flush()
        docs = [
            Document(
                run_id=run.id,
                external_id=str(i),
                line_no=i,
                text=f"{prefix} {i}",
                state=DocState.ESCALATED,
            )
            for i in range(n)
        ]
        s.add_all(docs)
        s.flush()
        return [d.id for d in docs]


def _parked(ids: list[int]) -> int:
    from sqlalchemy import func, select

    from shiftdown.db import session_scope
    from shiftdown.schema import DocState, Document

    with session_scope() as s:
        query = select(func.count()).where(
            Document.id.in_(ids), Document.state == DocState.AWAITING_FRONTIER
        )
        return int(s.scalar(query) or 0)


def one(processes: int, docs: int, hold_s: float) -> dict[str, Any]:
    """N processes, ``docs`` escalations, the frontier down for the whole run."""
    from workers.app import TASK_FRONTIER, dispatch

    server = ScriptedServer(label_for=lambda _: "card_arrival").start()
    server.down_until = time.monotonic() + 10 * 24 * 3600
    settings = {
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "sk-bench-0123456789",
        "SHIFTDOWN_FRONTIER_BREAKER_FAILURES": str(FAILURES),
        "SHIFTDOWN_FRONTIER_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
        "SHIFTDOWN_FRONTIER_RETRY_BASE_S": "0.2",
        "SHIFTDOWN_FRONTIER_RECOVER_INTERVAL_S": "5",
    }
    try:
        with scratch_stack(**settings) as env:
            ids = _escalated_run(docs)
            worker = start_worker(env, processes, queues="frontier")
            try:
                time.sleep(3.0)  # the pool up
                start = time.monotonic()
                for doc_id in ids:
                    dispatch(TASK_FRONTIER, [doc_id], queue="frontier")
                while _parked(ids) < docs and time.monotonic() - start < 300:
                    time.sleep(0.2)
                parked_s = time.monotonic() - start
                calls_to_park = len(server.requests)
                # Live traffic goes on (two escalations a second) while the frontier is
                # down, and the recovery pass probes: each process's breaker lets a call
                # through once per cool-down. Counted once the cool-downs are at their
                # longest (a minute, after 75 s).
                trickle = _escalated_run(int(2 * (hold_s + 90)), "t")
                settle_at = time.monotonic() + 90
                counted_from, counted_at = -1, 0.0
                for doc_id in trickle:
                    dispatch(TASK_FRONTIER, [doc_id], queue="frontier")
                    time.sleep(0.5)
                    if counted_from < 0 and time.monotonic() >= settle_at:
                        counted_from, counted_at = len(server.requests), time.monotonic()
                probes = len(server.requests) - counted_from
                counted_s = time.monotonic() - counted_at
            finally:
                stop_worker(worker)
    finally:
        server.stop()
    return {
        "processes": processes,
        "parked_s": parked_s,
        "calls_to_park": calls_to_park,
        "probes_per_min": probes * 60.0 / counted_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument(
        "--hold", type=float, default=120.0, help="seconds of probes counted, after 90 s"
    )
    args = parser.parse_args()
    rows = [one(n, args.docs, args.hold) for n in args.processes]
    print(
        f"{args.docs} escalations, frontier down (503), breaker after {FAILURES} failures, "
        f"cool-down {COOLDOWN_S:g} s doubling to 60 s, then two escalations a second; "
        "shared: the floor of one breaker"
    )
    print_table(
        [
            "processes",
            "s to park all",
            "calls to park all",
            "shared",
            "calls / min later",
            "shared",
        ],
        [
            [
                str(r["processes"]),
                f"{r['parked_s']:.1f}",
                str(r["calls_to_park"]),
                str(FAILURES),
                f"{r['probes_per_min']:.1f}",
                f"{rows[0]['probes_per_min']:.1f}",
            ]
            for r in rows
        ],
    )


if __name__ == "__main__":
    main()
