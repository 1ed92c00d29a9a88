"""Teacher sets: labelled examples (text, label) read from a CSV or JSONL file, checked
against the taxonomy before any training starts, or the task's stored ones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sqlalchemy import select

from shiftdown.db import session_scope
from shiftdown.errors import RecordError
from shiftdown.schema import TeacherExample
from shiftdown.taxonomy import Taxonomy


def read_labelled(
    path: Path, text_column: str, label_column: str, taxonomy: Taxonomy
) -> list[tuple[str, str]]:
    """Every (text, label) of ``path``; raises RecordError naming bad lines and labels."""
    examples: list[tuple[str, str]] = []
    problems: list[str] = []
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix in (".jsonl", ".ndjson"):
            rows = []
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((line_no, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        problems.append(f"line {line_no}: invalid JSON ({exc.msg})")
        else:
            reader = csv.DictReader(f)
            missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
            if missing:
                raise RecordError(
                    f"{path}: no column {', '.join(map(repr, missing))} "
                    f"(its columns: {', '.join(reader.fieldnames or [])})"
                )
            rows = list(enumerate(reader, start=2))
        for line_no, row in rows:
            text, label = row.get(text_column), row.get(label_column)
            if not isinstance(text, str) or not text.strip():
                problems.append(f"line {line_no}: no text in {text_column!r}")
            elif label not in taxonomy:
                problems.append(f"line {line_no}: label {label!r} is not in the taxonomy")
            else:
                examples.append((text, str(label)))
    if problems:
        shown = "; ".join(problems[:10])
        raise RecordError(f"{path}: {len(problems)} bad example(s): {shown}")
    return examples


def teacher_set(task_name: str) -> list[tuple[str, str]]:
    """Every stored example of the task, oldest first (the order a teacher hash is taken
    in): imports, teach labels and every frontier answer."""
    with session_scope() as session:
        rows = session.execute(
            select(TeacherExample.text, TeacherExample.label)
            .where(TeacherExample.task_name == task_name)
            .order_by(TeacherExample.id)
        ).all()
    return [(t, lbl) for t, lbl in rows]
