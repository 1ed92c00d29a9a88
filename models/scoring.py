"""A model version on labelled data, shared by ``calibrate``, ``policy``, ``eval`` and
``retrain``: resolving the version, scoring it through the serving path (one forward
pass per example), evaluating it; and what one escalation costs the task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.classifier import Classifier, ModelSpec, RuntimeOptions
from models.evaluate import evaluate
from models.policy import Economics
from models.registry import (
    ensure_task,
    model_name,
    resolve_model,
    spec_for,
    task_taxonomy,
    update_manifest,
)
from models.scores import Scores, score
from models.teacher import read_labelled
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.manifest import ModelManifest
from shiftdown.savings import frontier_usd_per_document
from shiftdown.schema import ModelVersion, Task
from shiftdown.settings import get_settings
from shiftdown.taxonomy import NONE_LABEL, Taxonomy

Examples = list[tuple[str, str]]
# How a caller shows progress: progress(description, total) yields advance(n).
Progress = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Progress that shows nothing."""
    yield lambda n: None


@dataclass(frozen=True)
class HeldoutData:
    """Which model, which task and which held-out data to score it on (None: the
    promoted model, SHIFTDOWN_TASK, the split its fine-tune held out)."""

    model_ref: str | None = None
    task_name: str | None = None
    taxonomy: Taxonomy | None = None
    data_path: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    limit: int | None = None


@dataclass(frozen=True)
class Scored:
    """A model version's scores on held-out data."""

    task_name: str
    version_id: int
    name: str
    temperature: float
    manifest: ModelManifest
    data: Path
    mean_chars: float
    scores: Scores
    open_set: bool = False

    @property
    def nones(self) -> tuple[Any, Any] | None:
        """Open set: which documents the model called none, and which are none."""
        return self.scores.outcome_masks(NONE_LABEL) if self.open_set else None


def score_spec(
    spec: ModelSpec, description: str, examples: Examples, progress: Progress = no_progress
) -> tuple[Scores, float]:
    """Scores of one model on ``examples``, and the temperature it serves with."""
    clf = Classifier(spec, RuntimeOptions.from_settings(get_settings()))
    with progress(description, len(examples)) as advance:
        return score(clf, examples, advance), clf.temperature


@dataclass(frozen=True)
class Resolved:
    """A model version resolved for a task, ready to load."""

    task_name: str
    version_id: int
    name: str
    spec: ModelSpec
    taxonomy: Taxonomy
    manifest: ModelManifest


def resolve_version(
    model_ref: str | None, task_name: str | None, taxonomy: Taxonomy | None
) -> Resolved:
    """The version ``model_ref`` names (a version, directory or GGUF; None: the promoted
    one) of the task (created with ``taxonomy`` on first use)."""
    s = get_settings()
    with session_scope() as session:
        task = ensure_task(session, task_name or s.task, taxonomy, s.threshold)
        version = resolve_model(session, task, model_ref, s.model_path)
        tax = task_taxonomy(task)
        return Resolved(
            task.name,
            version.id,
            model_name(version),
            spec_for(version, tax),
            tax,
            version.read_manifest(),
        )


def score_version(held: HeldoutData, progress: Progress = no_progress) -> Scored:
    """Resolve the version and score it on the held-out data."""
    found = resolve_version(held.model_ref, held.task_name, held.taxonomy)
    data_path, text_column, label_column = held.data_path, held.text_column, held.label_column
    if data_path is None:
        recorded = found.manifest.heldout
        if recorded is None or not recorded.path:
            raise ConfigError(
                f"{found.name} has no held-out split recorded: pass --data FILE (labelled "
                "data the model was not trained on)"
            )
        data_path = Path(recorded.path)
        text_column, label_column = "text", "label"
    examples = read_labelled(data_path, text_column, label_column, found.taxonomy)[: held.limit]
    if not examples:
        raise ConfigError(f"{data_path} has no labelled examples")
    scores, temperature = score_spec(found.spec, f"scoring {found.name}", examples, progress)
    mean_chars = sum(len(t) for t, _ in examples) / len(examples)
    return Scored(
        found.task_name,
        found.version_id,
        found.name,
        temperature,
        found.manifest,
        data_path,
        mean_chars,
        scores,
        found.taxonomy.open_set,
    )


# The figures of an evaluation kept with the version (``shiftdown models list`` shows them).
_RECORDED = (
    "documents",
    "accuracy",
    "macro_f1",
    "ece",
    "ece_uncalibrated",
    "temperature",
    "accuracy_at_coverage",
    "docs_per_s",
)


@dataclass(frozen=True)
class Evaluation:
    """A version's metrics on labelled data (see ``models.evaluate``) and its scores."""

    name: str
    report: dict[str, Any]
    scores: Scores
    temperature: float


def evaluate_version(held: HeldoutData, progress: Progress = no_progress) -> Evaluation:
    """Evaluate the version on ``held.data_path``, served as workers serve it, and keep
    the figures with the version."""
    if held.data_path is None:
        raise ConfigError("no labelled data to evaluate on: pass --data FILE")
    found = resolve_version(held.model_ref, held.task_name, held.taxonomy)
    examples = read_labelled(held.data_path, held.text_column, held.label_column, found.taxonomy)
    examples = examples[: held.limit]
    clf = Classifier(found.spec, RuntimeOptions.from_settings(get_settings()))
    with progress(f"eval {found.name}", len(examples)) as advance:
        report, scores = evaluate(clf, examples, advance)
    report["model"] = found.name
    with session_scope() as session:
        update_manifest(
            session,
            session.get_one(ModelVersion, found.version_id),
            evaluation={k: report[k] for k in _RECORDED} | {"data": str(held.data_path)},
        )
    return Evaluation(found.name, report, scores, clf.temperature)


def escalation_economics(
    task_name: str, mean_chars: float, frontier_accuracy: float
) -> tuple[Economics, str]:
    """Dollars per escalation of the task (recorded, else estimated for documents of
    ``mean_chars``), and what the figure rests on."""
    with session_scope() as session:
        task = session.get_one(Task, task_name)
        usd, basis = frontier_usd_per_document(
            session, task.name, task_taxonomy(task), mean_chars, get_settings()
        )
    return Economics(usd_per_escalation=usd, frontier_accuracy=frontier_accuracy), basis
