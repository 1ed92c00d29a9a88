"""Teacher sets: labels a user already has, or labels the frontier model gives to a
seeded sample of documents (each call costed and recorded like any frontier call).

Examples are stored per task, unique by text, so repeating a command adds nothing twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from models.registry import task_taxonomy
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import Task, TeacherExample
from shiftdown.settings import get_settings
from workers.frontier import get_client, record_call
from workers.frontier_client import OK
from workers.store import insert_teacher_examples, teacher_row, text_sha256


@dataclass
class TeachResult:
    """What a teach command added, skipped and spent."""

    added: int = 0
    skipped: int = 0
    failed: int = 0
    usd: float = 0.0


def import_labels(task_name: str, examples: Sequence[tuple[str, str]]) -> TeachResult:
    """Store labels the user already has (checked against the taxonomy beforehand)."""
    with session_scope() as session:
        added = insert_teacher_examples(
            session, [teacher_row(task_name, t, lbl, "import") for t, lbl in examples]
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
        if text_sha256(text) in known:
            result.skipped += 1
        else:
            answer = client.classify(text, taxonomy)
            with session_scope() as session:
                call = record_call(session, answer)
                session.flush()
                result.usd += answer.cost_usd or 0.0
                if answer.status == OK and answer.label is not None:
                    result.added += insert_teacher_examples(
                        session,
                        [teacher_row(task_name, text, answer.label, "frontier", call.id)],
                    )
                else:
                    result.failed += 1
        if on_progress:
            on_progress(1)
    return result
