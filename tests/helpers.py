"""Queries the pipeline tests use to check the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text

from shiftdown.db import session_scope
from shiftdown.schema import Document, FrontierCall, Prediction


def counts(run_id: int) -> dict[str, Any]:
    """Documents by state, predictions by stage, duplicates, frontier calls."""
    with session_scope() as s:
        states = dict(
            s.execute(
                select(Document.state, func.count())
                .where(Document.run_id == run_id)
                .group_by(Document.state)
            ).all()
        )
        stages = dict(
            s.execute(
                select(Prediction.stage, func.count())
                .where(Prediction.run_id == run_id)
                .group_by(Prediction.stage)
            ).all()
        )
        dup = s.scalar(
            select(func.count()).select_from(
                select(Prediction.document_id, Prediction.stage)
                .where(Prediction.run_id == run_id)
                .group_by(Prediction.document_id, Prediction.stage)
                .having(func.count() > 1)
                .subquery()
            )
        )
        calls = s.scalar(select(func.count()).where(FrontierCall.run_id == run_id))
        labelled = s.execute(
            text("SELECT count(*), count(label) FROM document_labels WHERE run_id = :r"),
            {"r": run_id},
        ).one()
    return {
        "states": states,
        "stages": stages,
        "duplicates": dup,
        "frontier_calls": calls,
        "documents": labelled[0],
        "labelled": labelled[1],
    }


def final_labels(run_id: int) -> dict[str, tuple[str, str]]:
    """external id -> (label, source) from the document_labels view."""
    with session_scope() as s:
        rows = s.execute(
            text("SELECT external_id, label, source FROM document_labels WHERE run_id = :r"),
            {"r": run_id},
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}
