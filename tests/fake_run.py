"""A run written straight into the store, of any size, without a model: what the report
and its charts are tested on when the numbers must be known exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from shiftdown.db import session_scope
from shiftdown.schema import (
    DocState,
    Document,
    FrontierCall,
    ModelVersion,
    Prediction,
    Run,
    Stage,
    Task,
)

LABELS = [f"label_{i:02d}" for i in range(30)]
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CALL_USD = 120 * 2.5e-6 + 7 * 10e-6  # gpt-4o list price of a 120 + 7 token call


@dataclass(frozen=True)
class FakeRun:
    """What was written, to check the report against."""

    run_id: int
    documents: int
    escalated: int
    parked: int
    queued: int
    frontier_usd: float


def write_fake_run(
    n_docs: int,
    *,
    escalate_share: float = 0.1,
    parked: bool = False,
    queued: int = 0,
    span_s: float = 120.0,
    batch: int = 8,
    seed: int = 1,
) -> FakeRun:
    """A finished run of ``n_docs`` documents, classified in batches of ``batch`` over
    ``span_s`` seconds; a share escalated (answered by the frontier, or parked without
    one); the last ``queued`` still waiting for the SLM."""
    rng = random.Random(seed)
    with session_scope() as s:
        version = s.scalar(select(ModelVersion).where(ModelVersion.task_name == "fake"))
        if version is None:
            s.add(Task(name="fake", taxonomy=LABELS, taxonomy_hash="x", threshold=0.5))
            s.flush()
            version = ModelVersion(task_name="fake", version=1, gguf_path="f.gguf", manifest={})
            s.add(version)
            s.flush()
        run = Run(
            task_name="fake",
            model_version_id=version.id,
            threshold=0.5,
            source="tickets.jsonl",
            created_at=START,
        )
        s.add(run)
        s.flush()
        run_id = run.id
        steps = max(1, (n_docs - queued + batch - 1) // batch)
        docs: list[dict[str, Any]] = []
        slm: list[dict[str, Any]] = []
        escalations: list[tuple[int, datetime]] = []
        for i in range(n_docs):
            at = START + timedelta(seconds=1 + span_s * (i // batch) / steps)
            doc: dict[str, Any] = {
                "run_id": run_id,
                "external_id": str(i),
                "line_no": i + 1,
                "text": f"query number {i} about my card",
                "created_at": START,
                "updated_at": at,
            }
            if i >= n_docs - queued:
                docs.append(doc | {"state": DocState.QUEUED})
                continue
            escalate = rng.random() < escalate_share
            state = DocState.CLASSIFIED
            if escalate:
                state = DocState.AWAITING_FRONTIER if parked else DocState.CLASSIFIED
                escalations.append((i, at))
            final = None if escalate and parked else (Stage.FRONTIER if escalate else Stage.SLM)
            docs.append(doc | {"state": state, "final_stage": final})
            slm.append(
                {
                    "run_id": run_id,
                    "stage": Stage.SLM,
                    "label": LABELS[(i * 7) % len(LABELS)],
                    "confidence": 0.3 if escalate else 0.9,
                    "escalated": escalate,
                    "model": "fake",
                    "latency_ms": rng.uniform(20, 80),
                    "created_at": at,
                }
            )
        ids = s.scalars(insert(Document).returning(Document.id, sort_by_parameter_order=True), docs)
        doc_ids = list(ids)
        slm_done = [d for d in range(n_docs) if d < n_docs - queued]
        for row, d in zip(slm, slm_done, strict=True):
            row["document_id"] = doc_ids[d]
        if slm:
            s.execute(insert(Prediction), slm)
        spent = 0.0
        if not parked and escalations:
            answers, calls = [], []
            for d, at in escalations:
                when = at + timedelta(seconds=0.8)
                common = {"document_id": doc_ids[d], "run_id": run_id, "created_at": when}
                answers.append(
                    common
                    | {
                        "stage": Stage.FRONTIER,
                        "label": LABELS[d % len(LABELS)],
                        "model": "gpt-4o",
                        "latency_ms": rng.uniform(300, 900),
                        "cost_usd": CALL_USD,
                    }
                )
                calls.append(
                    common
                    | {
                        "attempt": 1,
                        "model": "gpt-4o",
                        "status": "ok",
                        "prompt_tokens": 120,
                        "completion_tokens": 7,
                        "cost_usd": CALL_USD,
                        "latency_ms": 500.0,
                    }
                )
                spent += CALL_USD
            s.execute(insert(Prediction), answers)
            s.execute(insert(FrontierCall), calls)
    return FakeRun(
        run_id, n_docs, len(escalations), len(escalations) if parked else 0, queued, spent
    )
