"""Retraining a task's model: fine-tune a candidate on the teacher set (imports, teach
labels, and every escalation the frontier answered), shadow-evaluate it against the
promoted version on the same held-out data, and promote it only if it wins."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from models.policy import Target, stored_policy
from models.registry import (
    label_mismatch,
    model_name,
    promote,
    resolve_model,
    spec_for,
    task_taxonomy,
    update_manifest,
)
from models.retrain import Contender, contend, judge
from models.scoring import Progress, escalation_economics, no_progress, score_spec
from models.teacher import read_labelled, teacher_set
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError, ModelError
from shiftdown.schema import ModelVersion, Task, TeacherExample


@dataclass(frozen=True)
class RetrainOptions:
    """What ``shiftdown retrain`` was asked (None: the defaults it documents)."""

    task_name: str
    candidate: str | None = None
    out_dir: Path | None = None
    heldout: Path | None = None
    target: Target | None = None
    per_label: bool = False
    frontier_accuracy: float = 1.0
    epochs: float = 1.0
    valid_frac: float = 0.05


@dataclass(frozen=True)
class RetrainResult:
    """Both models' shadow evaluation and the verdict (``promoted`` is absent when the
    promoted model cannot serve the taxonomy, so the candidate wins unjudged)."""

    target: Target
    examples: int
    contenders: dict[str, Contender]
    names: dict[str, str]
    wins: bool
    reason: str


def _target(promoted: ModelVersion, given: Target | None) -> Target:
    if given is not None:
        return given
    stored = stored_policy(promoted.read_manifest())
    if stored is None:
        raise ConfigError(
            "no target: give one (or set a policy on the promoted version with "
            "`shiftdown policy set`)"
        )
    return stored.target


def train_candidate(
    opts: RetrainOptions, out_dir: Path, progress: Progress, say: Callable[[str], None]
) -> Path:
    """Fine-tune a candidate on the task's teacher set into ``out_dir``."""
    from models.base import default_gguf_path
    from models.training.finetune import FinetuneConfig, finetune, stratified_split

    with session_scope() as session:
        tax = task_taxonomy(session.get_one(Task, opts.task_name))
        sources = Counter(
            session.scalars(
                select(TeacherExample.source).where(TeacherExample.task_name == opts.task_name)
            )
        )
    examples = [(t, lbl) for t, lbl in teacher_set(opts.task_name) if lbl in tax]
    if len(examples) < 2 * len(tax):
        raise ConfigError(
            f"task {opts.task_name!r} has {len(examples)} teacher examples in its taxonomy: "
            "import labels or run `shiftdown teach` first"
        )
    say("teacher set: " + ", ".join(f"{n} {src}" for src, n in sorted(sources.items())))
    train_set, valid_set = stratified_split(examples, opts.valid_frac, seed=0)
    with progress("fine-tuning candidate", None) as advance:
        finetune(
            default_gguf_path(),
            train_set,
            tax.outcomes,
            out_dir,
            FinetuneConfig(epochs=opts.epochs),
            lambda step, total, loss: advance(1),
            heldout=valid_set,
        )
    # Documents unlike everything it learnt are escalated whatever its confidence.
    from models.familiarity_fit import fit_model_dir, fit_runtime_options

    try:
        with progress("fitting familiarity", len(train_set) + len(valid_set)) as advance:
            fit_model_dir(out_dir, train_set, valid_set, fit_runtime_options(), on_progress=advance)
    except ModelError as exc:
        say(f"familiarity: not fitted ({exc}); the candidate serves without it")
    return out_dir


def retrain_task(
    opts: RetrainOptions,
    progress: Progress = no_progress,
    say: Callable[[str], None] = lambda line: None,
) -> RetrainResult:
    """Train (or take) a candidate, judge it against the promoted version on the
    target (the promoted one's policy by default), record the verdict with the
    candidate, and promote it if it wins."""
    name = opts.task_name
    with session_scope() as session:
        task = session.get(Task, name)
        if task is None or task.model_version_id is None:
            raise ConfigError(f"task {name!r} has no promoted model to compare against")
        promoted = session.get_one(ModelVersion, task.model_version_id)
        target = _target(promoted, opts.target)
        promoted_id = promoted.id
    candidate = opts.candidate
    if candidate is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        out = opts.out_dir or Path("shiftdown-models") / name / stamp
        candidate = str(train_candidate(opts, out, progress, say))
    with session_scope() as session:
        task = session.get_one(Task, name)
        tax = task_taxonomy(task)
        cand = resolve_model(session, task, candidate, None)
        if cand.id == promoted_id:
            raise ConfigError("the candidate is the promoted version")
        prom = session.get_one(ModelVersion, promoted_id)
        stale = label_mismatch(prom, task)
        specs = {"candidate": spec_for(cand, tax), "promoted": spec_for(prom, tax)}
        names = {"candidate": model_name(cand), "promoted": model_name(prom)}
        cand_id = cand.id
        recorded = cand.read_manifest().heldout
        data = opts.heldout or Path(recorded.path if recorded and recorded.path else "")
    if not data.is_file():
        raise ConfigError("no held-out data: pass --heldout FILE (text,label)")
    examples = read_labelled(data, "text", "label", tax)
    mean_chars = sum(len(t) for t, _ in examples) / len(examples)
    econ, _ = escalation_economics(name, mean_chars, opts.frontier_accuracy)
    contenders: dict[str, Contender] = {}
    for role in ["candidate"] if stale else ["candidate", "promoted"]:
        scores, _ = score_spec(specs[role], f"shadow eval {names[role]}", examples, progress)
        contenders[role] = contend(scores, target, econ, opts.per_label)
    cand_c = contenders["candidate"]
    if stale:
        wins, reason = True, f"the promoted model cannot serve the taxonomy ({stale})"
        verdict_data = {"wins": True, "reason": reason, "candidate": cand_c.outcome.as_dict()}
    else:
        verdict = judge(cand_c, contenders["promoted"], target)
        wins, reason, verdict_data = verdict.wins, verdict.reason, verdict.as_dict()
    with session_scope() as session:
        version = session.get_one(ModelVersion, cand_id)
        update_manifest(
            session,
            version,
            temperature=cand_c.temperature,
            policy=cand_c.policy.to_dict(),
            shadow={**verdict_data, "data": str(data), "against": names["promoted"]},
        )
        if wins:
            promote(session, session.get_one(Task, name), version)
    return RetrainResult(target, len(examples), contenders, names, wins, reason)
