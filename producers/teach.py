"""Teacher sets: labels a user already has, or labels the frontier model gives to a
seeded sample of documents (each call costed and recorded like any frontier call).

Examples are stored per task, unique by text, so repeating a command adds nothing twice.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.registry import task_taxonomy
from shiftdown.db import insert_or_skip, session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import Task, TeacherExample
from shiftdown.settings import get_settings
from workers.frontier import get_client, record_call
from workers.frontier_client import OK


@dataclass
class TeachResult:
    """What a teach command added, skipped and spent."""

    added: int = 0
    skipped: int = 0
    failed: int = 0
    usd: float = 0.0


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _insert(session: Session, rows: list[dict[str, object]]) -> int:
    if not rows:
        return 0
    stmt = insert_or_skip(session, TeacherExample, ["task_name", "text_sha256"])
    result = session.execute(stmt.returning(TeacherExample.id), rows)
    return len(result.all())


def import_labels(task_name: str, examples: Sequence[tuple[str, str]]) -> TeachResult:
    """Store labels the user already has (checked against the taxonomy beforehand)."""
    with session_scope() as session:
        added = _insert(
            session,
            [
                {
                    "task_name": task_name,
                    "text": t,
                    "text_sha256": _sha(t),
                    "label": lbl,
                    "source": "import",
                }
                for t, lbl in examples
            ],
        )
    return TeachResult(added=added, skipped=len(examples) - added)


def frontier_label(
    task_name: str,
    texts: Sequence[str],
    sample: int | None,
    seed: int,
    on_progress: Callable[[int], None] | None = None,
) -> TeachResult:
    """Have the frontier model label a seeded sample of ``texts``."""
    if not get_settings().frontier_configured:
        raise ConfigError("no frontier configured: set OPENAI_API_KEY and/or OPENAI_BASE_URL")
    with session_scope() as session:
        taxonomy = task_taxonomy(session.get_one(Task, task_name))
        known = set(
            session.scalars(
                select(TeacherExample.text_sha256).where(TeacherExample.task_name == task_name)
            )
        )
    unique = list(dict.fromkeys(texts))
    chosen = random.Random(seed).sample(unique, min(sample, len(unique))) if sample else unique
    result = TeachResult()
    client = get_client()
    for text in chosen:
        if _sha(text) in known:
            result.skipped += 1
        else:
            answer = client.classify(text, taxonomy)
            with session_scope() as session:
                call = record_call(session, answer)
                session.flush()
                result.usd += answer.cost_usd or 0.0
                if answer.status == OK and answer.label is not None:
                    result.added += _insert(
                        session,
                        [
                            {
                                "task_name": task_name,
                                "text": text,
                                "text_sha256": _sha(text),
                                "label": answer.label,
                                "source": "frontier",
                                "frontier_call_id": call.id,
                            }
                        ],
                    )
                else:
                    result.failed += 1
        if on_progress:
            on_progress(1)
    return result


def teacher_set(task_name: str) -> list[tuple[str, str]]:
    """Every example of the task, oldest first (the order a teacher hash is taken in)."""
    with session_scope() as session:
        rows = session.execute(
            select(TeacherExample.text, TeacherExample.label)
            .where(TeacherExample.task_name == task_name)
            .order_by(TeacherExample.id)
        ).all()
    return [(t, lbl) for t, lbl in rows]
