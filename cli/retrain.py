"""``shiftdown retrain``: fine-tune a candidate on the teacher set (imports, teach
labels, and every escalation the frontier answered), shadow-evaluate it against the
promoted version, and promote it only if it wins on the target."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from cli.common import ensure_schema, handle_errors
from cli.policy import TARGET_FLAGS, economics_option, target_options
from cli.progress import progress_bar
from models.classifier import Classifier
from models.policy import Economics, Target
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
from models.scores import score
from models.teacher import read_labelled
from producers.teach import teacher_set
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.savings import frontier_usd_per_document
from shiftdown.schema import ModelVersion, Task, TeacherExample
from shiftdown.settings import get_settings
from workers.slm import runtime_options


def _stored_target(promoted: ModelVersion) -> Target:
    stored = (promoted.manifest or {}).get("policy")
    if not stored:
        raise ConfigError(
            f"no target: pass one of {TARGET_FLAGS} (or set a policy on the promoted version)"
        )
    return Target(stored["target"]["kind"], float(stored["target"]["value"]))


def _train_candidate(task_name: str, out_dir: Path, epochs: float, valid_frac: float) -> Path:
    from models.base import default_gguf_path
    from models.finetune import FinetuneConfig, stratified_split
    from models.finetune import finetune as train

    with session_scope() as session:
        tax = task_taxonomy(session.get_one(Task, task_name))
        sources = Counter(
            session.scalars(
                select(TeacherExample.source).where(TeacherExample.task_name == task_name)
            )
        )
    examples = [(t, lbl) for t, lbl in teacher_set(task_name) if lbl in tax]
    if len(examples) < 2 * len(tax):
        raise ConfigError(
            f"task {task_name!r} has {len(examples)} teacher examples in its taxonomy: "
            "import labels or run `shiftdown teach` first"
        )
    click.echo(
        "teacher set: " + ", ".join(f"{n} {src}" for src, n in sorted(sources.items())), err=True
    )
    train_set, valid_set = stratified_split(examples, valid_frac, seed=0)
    with progress_bar("fine-tuning candidate", total=None) as advance:
        train(
            default_gguf_path(),
            train_set,
            tax.names,
            out_dir,
            FinetuneConfig(epochs=epochs, merged=False),
            lambda step, total, loss: advance(1),
            heldout=valid_set,
        )
    return out_dir


@click.command()
@click.option("--task", "task_name", default=None, help="Task (default: SHIFTDOWN_TASK).")
@click.option(
    "--candidate",
    default=None,
    help="An already trained model directory or GGUF to judge instead of fine-tuning one.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the new candidate goes (default: shiftdown-models/TASK/<time>).",
)
@click.option(
    "--heldout",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labelled data (text,label) both models are judged on (default: the candidate's "
    "held-out split, which the promoted model may have seen: a conservative judge).",
)
@target_options
@click.option("--per-label", is_flag=True, help="Per-label thresholds for both models.")
@economics_option
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--valid-frac", default=0.1, show_default=True, help="Held out of training.")
@handle_errors
def retrain(
    task_name: str | None,
    candidate: str | None,
    out_dir: Path | None,
    heldout: Path | None,
    target: Target | None,
    per_label: bool,
    frontier_accuracy: float,
    epochs: float,
    valid_frac: float,
) -> None:
    """Train a candidate on everything the frontier has taught, and promote it only if
    it beats the promoted version on the target (the promoted one's policy by default)."""
    ensure_schema()
    s = get_settings()
    name = task_name or s.task
    with session_scope() as session:
        task = session.get(Task, name)
        if task is None or task.model_version_id is None:
            raise ConfigError(f"task {name!r} has no promoted model to compare against")
        promoted = session.get_one(ModelVersion, task.model_version_id)
        target = target or _stored_target(promoted)
        promoted_id = promoted.id
    if candidate is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        out = out_dir or Path("shiftdown-models") / name / stamp
        candidate = str(_train_candidate(name, out, epochs, valid_frac))
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
        data = heldout or Path((cand.manifest or {}).get("heldout", {}).get("path", ""))
    if not data.is_file():
        raise ConfigError("no held-out data: pass --heldout FILE (text,label)")
    examples = read_labelled(data, "text", "label", tax)
    with session_scope() as session:
        task = session.get_one(Task, name)
        usd, _ = frontier_usd_per_document(
            session, name, tax, sum(len(t) for t, _ in examples) / len(examples), s
        )
    econ = Economics(usd_per_escalation=usd, frontier_accuracy=frontier_accuracy)
    contenders: dict[str, Contender] = {}
    for role in ["candidate"] if stale else ["candidate", "promoted"]:
        clf = Classifier(specs[role], runtime_options(s))
        with progress_bar(f"shadow eval {names[role]}", total=len(examples)) as advance:
            contenders[role] = contend(score(clf, examples, advance), target, econ, per_label)
    cand_c = contenders["candidate"]
    if stale:
        wins, reason = True, f"the promoted model cannot serve the taxonomy ({stale})"
        verdict_data = {"wins": True, "reason": reason, "candidate": cand_c.outcome.as_dict()}
    else:
        verdict = judge(cand_c, contenders["promoted"], target)
        wins, reason, verdict_data = verdict.wins, verdict.reason, verdict.as_dict()
    with session_scope() as session:
        task = session.get_one(Task, name)
        version = session.get_one(ModelVersion, cand_id)
        update_manifest(
            session,
            version,
            temperature=cand_c.temperature,
            policy=cand_c.policy.to_dict(),
            shadow={**verdict_data, "data": str(data), "against": names["promoted"]},
        )
        if wins:
            promote(session, task, version)
    table = Table(title=f"shadow evaluation on {len(examples)} held-out: {target.describe()}")
    for column in ("model", "escalated", "kept accuracy", "overall", "$ / 1k docs"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, c in contenders.items():
        o = c.outcome
        table.add_row(
            f"{role} {names[role]}",
            f"{100 * o.escalation_rate:.2f} %",
            "-" if o.kept_accuracy is None else f"{100 * o.kept_accuracy:.2f} %",
            f"{100 * o.overall_accuracy:.2f} %",
            f"${o.usd_per_1k:.4f}",
        )
    Console().print(table)
    verb = "promoted" if wins else "kept the promoted version; refused"
    click.echo(f"{verb} {names['candidate']}: {reason}")
