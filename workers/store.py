"""Idempotent writes shared by the worker stages.

Delivery is at least once, so every write tolerates a second delivery of the same task:
predictions are unique per (document, stage) and state changes are conditional on the
state they move from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from shiftdown.db import insert_or_skip
from shiftdown.schema import (
    DocState,
    Document,
    Prediction,
    Stage,
    TeacherExample,
    state_in,
    utcnow,
)
from workers.results_stream import owe


@dataclass(frozen=True)
class PredictionRow:
    """One ``predictions`` row, whichever stage wrote it."""

    document_id: int
    run_id: int
    stage: Stage
    label: str | None  # None: the none outcome of an open-set task
    confidence: float | None
    model: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    escalated: bool | None = None
    distribution: dict[str, float] | None = None
    model_version_id: int | None = None
    escalation_reason: str | None = None
    unfamiliarity: float | None = None
    unfamiliar: bool | None = None

    def as_row(self) -> dict[str, Any]:
        """The row as the insert takes it.

        A shallow copy: ``dataclasses.asdict`` deep-copies the distribution too, and cost
        20 us a row, an eighth of a threads-pool worker's time holding the GIL per
        document (py-spy --gil, tiny model's pipeline)."""
        return dict(vars(self))


def insert_predictions(session: Session, rows: Sequence[PredictionRow]) -> None:
    """Bulk-insert predictions, skipping any (document, stage) already stored."""
    if not rows:
        return
    session.execute(
        insert_or_skip(session, Prediction, ["document_id", "stage"]),
        [row.as_row() for row in rows],
    )


def move_documents(
    session: Session,
    ids: Iterable[int],
    from_states: Iterable[str],
    **values: Any,
) -> int:
    """Set ``values`` on the documents still in one of ``from_states``; returns how many."""
    id_list = list(ids)
    if not id_list:
        return 0
    result = session.execute(
        update(Document)
        .where(Document.id.in_(id_list), state_in(from_states))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class SlmOutcome:
    """What the SLM stage decided for one queued document: its new state, and the
    ``predictions`` row (absent when it failed, with ``error`` saying why)."""

    document_id: int
    state: DocState
    truncated: bool = False
    prediction: PredictionRow | None = None
    error: str | None = None


# Postgres: a task's predictions and its documents' moves in one statement with one
# JSON parameter. The portable path below is four to six statements, each with one
# placeholder per row and column, which psycopg and Postgres parse afresh every time:
# more than half of a worker's time per task, measured on the tiny model's pipeline.
# The state test is wrapped for the reason ``shiftdown.schema.state_in`` gives.
_PG_STORE_SLM = sql_text(
    """
    WITH r AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS r(
            document_id bigint, state text, final_stage text, truncated boolean, error text,
            run_id integer, label text, confidence double precision, escalated boolean,
            distribution jsonb, model text, model_version_id integer,
            latency_ms double precision, prompt_tokens integer, escalation_reason text,
            unfamiliarity double precision, unfamiliar boolean)
    ), inserted AS (
        INSERT INTO predictions (document_id, run_id, stage, label, confidence, escalated,
            distribution, model, model_version_id, latency_ms, prompt_tokens,
            completion_tokens, cost_usd, created_at, escalation_reason, unfamiliarity,
            unfamiliar)
        SELECT document_id, run_id, :stage, label, confidence, escalated, distribution,
            model, model_version_id, latency_ms, prompt_tokens, 0, 0.0, :now,
            escalation_reason, unfamiliarity, unfamiliar
        FROM r WHERE model IS NOT NULL
        ON CONFLICT (document_id, stage) DO NOTHING
    )
    UPDATE documents AS d
    SET state = r.state,
        final_stage = COALESCE(r.final_stage, d.final_stage),
        truncated = d.truncated OR r.truncated,
        error = COALESCE(r.error, d.error),
        updated_at = :now
    FROM r
    WHERE d.id = r.document_id AND COALESCE(d.state, '') = :queued
    RETURNING d.id, d.run_id, d.state
    """
)

# States that end a document's way through the cascade (shiftdown.results.FINAL).
_FINAL = {DocState.CLASSIFIED.value, DocState.FAILED.value, DocState.FRONTIER_FAILED.value}


def store_slm_outcomes(session: Session, outcomes: Sequence[SlmOutcome]) -> list[int]:
    """Record the SLM stage's outcomes: each prediction once, and each document moved
    out of ``queued`` only if it is still there (a repeated delivery changes nothing).

    Returns the documents this settled whose results are owed to the results stream
    (none when it is off), for ``results_stream.append`` after the commit."""
    if not outcomes:
        return []
    if session.get_bind().dialect.name == "postgresql":
        rows = [
            {
                "document_id": o.document_id,
                "state": o.state.value,
                "final_stage": Stage.SLM.value if o.state == DocState.CLASSIFIED else None,
                "truncated": o.truncated,
                "error": o.error,
                **(o.prediction.as_row() if o.prediction else {}),
            }
            for o in outcomes
        ]
        params = {
            "rows": json.dumps(rows),
            "stage": Stage.SLM.value,
            "now": utcnow(),
            "queued": DocState.QUEUED.value,
        }
        moved = session.execute(_PG_STORE_SLM, params).all()
        return owe(session, ((d, r) for d, r, state in moved if state in _FINAL))
    insert_predictions(session, [o.prediction for o in outcomes if o.prediction is not None])
    queued = [DocState.QUEUED]
    # What this transaction moves out of queued (a redelivery finds it moved already):
    # the results it settles, owed to the stream.
    query = select(Document.id, Document.run_id).where(
        Document.id.in_([o.document_id for o in outcomes]), state_in([DocState.QUEUED])
    )
    still_queued = {doc_id: run_id for doc_id, run_id in session.execute(query)}
    settled = [
        (o.document_id, still_queued[o.document_id])
        for o in outcomes
        if o.document_id in still_queued and o.state.value in _FINAL
    ]
    move_documents(
        session, [o.document_id for o in outcomes if o.truncated], queued, truncated=True
    )
    by_state: dict[DocState, list[int]] = {}
    for o in outcomes:
        if o.error is None:
            by_state.setdefault(o.state, []).append(o.document_id)
        else:
            move_documents(session, [o.document_id], queued, state=o.state, error=o.error)
    for state, ids in by_state.items():
        final = {"final_stage": Stage.SLM} if state == DocState.CLASSIFIED else {}
        move_documents(session, ids, queued, state=state, **final)
    return owe(session, settled)


def text_sha256(text: str) -> str:
    """The hash teacher examples are unique by (lone surrogates from bad input included)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def teacher_row(
    task_name: str, text: str, label: str, source: str, frontier_call_id: int | None = None
) -> dict[str, Any]:
    """A ``teacher_examples`` row; examples are unique per task by their text's hash."""
    return {
        "task_name": task_name,
        "text": text,
        "text_sha256": text_sha256(text),
        "label": label,
        "source": source,
        "frontier_call_id": frontier_call_id,
    }


def insert_teacher_examples(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Add examples whose text the task does not have yet; returns how many were added."""
    if not rows:
        return 0
    stmt = insert_or_skip(session, TeacherExample, ["task_name", "text_sha256"])
    return len(session.execute(stmt.returning(TeacherExample.id), list(rows)).all())
