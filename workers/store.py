"""Idempotent writes shared by the worker stages.

Delivery is at least once, so every write tolerates a second delivery of the same task:
predictions are unique per (document, stage) and state changes are conditional on the
state they move from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shiftdown.db import insert_or_skip
from shiftdown.schema import Document, Prediction, TeacherExample


def insert_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-insert predictions, skipping any (document, stage) already stored."""
    if not rows:
        return
    session.execute(insert_or_skip(session, Prediction, ["document_id", "stage"]), list(rows))


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
        .where(Document.id.in_(id_list), Document.state.in_(list(from_states)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


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
