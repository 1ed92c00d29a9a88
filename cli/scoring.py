"""Scoring a model version on held-out labelled data, shared by ``calibrate`` and
``policy``: the same options, the same serving path, one forward pass per example."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cli.common import ensure_schema, load_taxonomy
from cli.progress import progress_bar
from models.classifier import Classifier
from models.registry import ensure_task, model_name, resolve_model, spec_for, task_taxonomy
from models.scores import Scores, score
from models.teacher import read_labelled
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.settings import get_settings
from workers.slm import runtime_options

F = TypeVar("F", bound=Callable[..., Any])


def heldout_options(func: F) -> F:
    """Which model, which task and which held-out data."""
    decorators = [
        click.option(
            "--model",
            "model_ref",
            default=None,
            help="Version, model directory or GGUF (default: the promoted one).",
        ),
        click.option("--task", "task_name", default=None, help="Task (default: SHIFTDOWN_TASK)."),
        click.option("--taxonomy", type=click.Path(exists=True, dir_okay=False), default=None),
        click.option(
            "--data",
            "data_path",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Held-out labelled CSV/JSONL (default: the split `finetune` held out).",
        ),
        click.option("--text-column", default="text", show_default=True),
        click.option("--label-column", default="label", show_default=True),
        click.option("--limit", type=int, default=None, help="Use the first N examples only."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@dataclass(frozen=True)
class Scored:
    """A model version's scores on held-out data."""

    task_name: str
    version_id: int
    name: str
    temperature: float
    manifest: dict[str, Any]
    data: Path
    mean_chars: float
    scores: Scores


def score_version(
    model_ref: str | None,
    task_name: str | None,
    taxonomy: str | None,
    data_path: Path | None,
    text_column: str,
    label_column: str,
    limit: int | None,
) -> Scored:
    """Resolve the version and score it on the held-out data, with a progress bar."""
    ensure_schema()
    s = get_settings()
    with session_scope() as session:
        task = ensure_task(session, task_name or s.task, load_taxonomy(taxonomy), s.threshold)
        version = resolve_model(session, task, model_ref, s.model_path)
        tax = task_taxonomy(task)
        spec, name, version_id = spec_for(version, tax), model_name(version), version.id
        manifest, task_name = dict(version.manifest or {}), task.name
    if data_path is None:
        heldout = manifest.get("heldout") or {}
        if not heldout.get("path"):
            raise ConfigError(
                f"{name} has no held-out split recorded: pass --data FILE (labelled data "
                "the model was not trained on)"
            )
        data_path = Path(heldout["path"])
        text_column, label_column = "text", "label"
    examples = read_labelled(data_path, text_column, label_column, tax)[:limit]
    if not examples:
        raise ConfigError(f"{data_path} has no labelled examples")
    clf = Classifier(spec, runtime_options(s))
    with progress_bar(f"scoring {name}", total=len(examples)) as advance:
        scores = score(clf, examples, advance)
    mean_chars = sum(len(t) for t, _ in examples) / len(examples)
    return Scored(
        task_name, version_id, name, clf.temperature, manifest, data_path, mean_chars, scores
    )
