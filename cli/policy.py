"""``shiftdown policy``: solve the escalation thresholds for a target, show the trade-off."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from cli.common import ensure_schema, handle_errors
from cli.options import (
    TARGET_FLAGS,
    economics_option,
    heldout_options,
    model_option,
    target_options,
    task_option,
)
from cli.progress import progress_bar
from models.candidates import DEFAULT_TARGET_RECALL, gold_ranks, recall_curve
from models.familiarity import crossfit_flags
from models.policy import (
    Outcome,
    Target,
    answers,
    cross_checked,
    curve,
    fit_none_margin,
    fit_policy,
    outcome,
    stored_policy,
)
from models.registry import find_version, update_manifest, version_number
from models.scoring import HeldoutData, Scored, escalation_economics, score_version
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import ModelVersion, Task
from shiftdown.settings import get_settings
from shiftdown.taxonomy import NONE_LABEL

F = TypeVar("F", bound=Callable[..., Any])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _outcome_row(table: Table, name: str, o: Outcome, threshold: str) -> None:
    none = [_pct(o.none_recall), _pct(o.none_precision)] if len(table.columns) > 6 else []
    table.add_row(
        name,
        threshold,
        _pct(o.escalation_rate),
        _pct(o.kept_accuracy),
        _pct(o.overall_accuracy),
        f"${o.usd_per_1k:.4f}",
        *none,
    )


def unseen_unfamiliar(scored: Scored) -> tuple[npt.NDArray[np.bool_], str]:
    """Which held-out documents the familiarity score flags, as it would flag unseen
    ones, and how that was measured. Where the score's threshold was fitted on these
    same documents (``finetune`` fits it on the held-out split that ``policy set`` reads
    by default) its own flags are in sample, a share fixed by construction: each half is
    flagged by a threshold fitted on the other half instead."""
    sc = scored.scores
    assert sc.unfamiliar is not None
    ref = scored.manifest.familiarity
    recorded = scored.manifest.heldout
    same_data = (
        recorded is not None
        and recorded.path is not None
        and Path(recorded.path).resolve() == Path(scored.data).resolve()
    )
    if ref is None or sc.unfamiliarity is None or not (ref.calibration == "heldout" and same_data):
        return sc.unfamiliar, "the model's threshold, fitted on other documents"
    flags = crossfit_flags(sc.unfamiliarity, ref.false_flag_rate)
    return flags, "2-fold: the threshold refitted on the other half of these documents"


def _outcome_table(title: str, open_set: bool = False) -> Table:
    table = Table(title=title)
    columns = ["policy", "threshold", "escalated", "kept accuracy", "overall", "$ / 1k docs"]
    if open_set:  # recall: none documents ending none; precision: of the kept none answers
        columns += ["none recall", "none precision"]
    for column in columns:
        table.add_column(column, justify="left" if column == "policy" else "right")
    return table


@click.group()
def policy() -> None:
    """Escalation policy: thresholds solved for a target on held-out data."""


@policy.command("set")
@heldout_options
@target_options
@click.option(
    "--per-label", is_flag=True, help="A threshold per predicted label instead of one global."
)
@economics_option
@click.option(
    "--candidate-recall",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_TARGET_RECALL,
    show_default=True,
    help="Escalations offer the frontier the SLM's top k labels, k the smallest whose "
    "held-out recall reaches this (0: always the whole taxonomy).",
)
@click.option(
    "--none-recall",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Open set: the share of none documents the SLM must answer none itself. The "
    "fewest documents with a label are then called none: none must beat the best label "
    "by a margin fitted for this on held-out data (default: the most probable answer).",
)
@handle_errors
def set_policy(
    held: HeldoutData,
    target: Target | None,
    per_label: bool,
    frontier_accuracy: float,
    candidate_recall: float,
    none_recall: float | None,
) -> None:
    """Solve the threshold(s) that meet one target and store them with the model version.

    Runs created from then on with this version use them. Global and per-label
    thresholds are both checked on held-out folds they were not fitted on.
    """
    if target is None:
        raise click.UsageError(f"give one target: {TARGET_FLAGS}")
    ensure_schema()
    scored = score_version(held, progress_bar)
    econ, basis = escalation_economics(scored.task_name, scored.mean_chars, frontier_accuracy)
    sc = scored.scores
    conf, predicted, correct = sc.confidence(scored.temperature), sc.predicted, sc.correct
    nones = scored.nones
    margin = 0.0
    if none_recall is not None:
        if nones is None:
            raise click.UsageError("--none-recall is for open-set tasks")
        probs, none_index = sc.probs(scored.temperature), sc.labels.index(NONE_LABEL)
        margin = fit_none_margin(probs, none_index, nones[1], none_recall)
        top, conf = answers(probs, none_index, margin)
        predicted, correct = [sc.labels[i] for i in top], np.asarray(top == sc.gold)
        nones = (np.asarray(top == none_index), nones[1])
    # Unfamiliar documents go to the frontier whatever the thresholds say: the target
    # counts them (as unseen documents would be flagged), and so does the bound.
    unfamiliar, how = unseen_unfamiliar(scored) if sc.unfamiliar is not None else (None, "")
    fitted = {
        per: fit_policy(
            conf, predicted, correct, target, econ, per, scored.temperature, nones, unfamiliar
        )
        for per in (False, True)
    }
    for p in fitted.values():
        p.none_margin = margin
    checked = {
        per: cross_checked(
            conf, predicted, correct, target, econ, per, nones=nones, forced=unfamiliar
        )
        for per in fitted
    }
    chosen_policy = fitted[per_label]
    if candidate_recall:
        chosen_policy.fit_candidates(sc.logits, sc.gold, predicted, conf, candidate_recall)
    added = None
    if unfamiliar is not None:
        # What the unfamiliar escalations add to the thresholds' own (both are in the
        # fitted escalation rate and its bound).
        added = float((unfamiliar & ~chosen_policy.escalate(predicted, conf)).mean())
        chosen_policy.fitted |= {
            "unfamiliar_rate": round(float(unfamiliar.mean()), 6),
            "unfamiliar_rate_basis": how,
            "unfamiliar_added": round(added, 6),
        }
    chosen_policy.fitted |= {
        "data": str(scored.data),
        "usd_per_escalation": round(econ.usd_per_escalation, 8),
        "usd_basis": basis,
        "frontier_accuracy": frontier_accuracy,
        "cross_checked": {
            ("per_label" if per else "global"): o.as_dict() for per, o in checked.items()
        },
    }
    with session_scope() as session:
        update_manifest(
            session,
            session.get_one(ModelVersion, scored.version_id),
            policy=chosen_policy.to_dict(),
        )
    table = _outcome_table(
        f"{scored.name}: {target.describe()} on {len(correct)} held-out "
        f"(${econ.usd_per_escalation:.6f} per escalation, {basis})",
        scored.open_set,
    )
    for per in (False, True):
        name = "per-label" if per else "global"
        p = fitted[per]
        own = len(p.per_label)
        shown = f"{p.threshold:.4f}" + (f" ({own} own)" if own else "")
        escalated = p.escalate(predicted, conf)
        if unfamiliar is not None:
            escalated = escalated | unfamiliar
        on_fit = outcome(escalated, correct, econ, nones)
        _outcome_row(table, f"{name} (fit)", on_fit, shown)
        _outcome_row(table, f"{name} (2-fold)", checked[per], "")
    Console().print(table)
    bound = chosen_policy.fitted["escalation_rate_upper_95"]
    click.echo(f"escalation rate on unseen documents: at most {100 * bound:.1f} % (95 % bound)")
    if unfamiliar is not None and added is not None:
        click.echo(
            f"unfamiliar documents (escalated whatever their confidence): "
            f"{100 * unfamiliar.mean():.1f} % of unseen held-out documents are flagged "
            f"({chosen_policy.fitted['unfamiliar_rate_basis']}), {100 * added:.1f} % on top of "
            "the policy's escalations; the bound above counts them"
        )
    if margin:
        click.echo(
            f"the SLM answers none when none is at least {np.exp(margin):.3g}x as probable as "
            f"the best label (held-out none recall target {100 * (none_recall or 0):.1f} %)"
        )
    rule = chosen_policy.candidates
    if rule is not None:
        click.echo(
            "escalations offer the whole taxonomy"
            if not rule.k
            else f"escalations offer the SLM's top {rule.k} labels and 'none of these' "
            f"(held-out recall {100 * rule.recall:.1f} % on {rule.documents} {rule.chosen_on} "
            f"documents, target {100 * rule.target_recall:.1f} %)"
        )
    click.echo(
        f"stored the {'per-label' if per_label else 'global'} policy with {scored.name}; "
        "new runs with this version use it"
    )


@policy.command("curve")
@heldout_options
@economics_option
@click.option(
    "--chart", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG file."
)
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
@handle_errors
def curve_command(
    held: HeldoutData,
    frontier_accuracy: float,
    chart: Path | None,
    as_json: bool,
) -> None:
    """The trade-off on held-out data: escalation rate against kept and overall accuracy
    and frontier dollars per 1,000 documents."""
    ensure_schema()
    scored = score_version(held, progress_bar)
    econ, basis = escalation_economics(scored.task_name, scored.mean_chars, frontier_accuracy)
    sc = scored.scores
    points = curve(sc.confidence(scored.temperature), sc.correct, econ, nones=scored.nones)
    if as_json:
        click.echo(
            json.dumps([{"threshold": round(t, 6), **o.as_dict()} for t, o in points], indent=2)
        )
    else:
        table = _outcome_table(
            f"{scored.name} on {len(sc.correct)} held-out (frontier accuracy "
            f"{100 * frontier_accuracy:.0f} %, ${econ.usd_per_escalation:.6f} per escalation, "
            f"{basis})",
            scored.open_set,
        )
        for threshold, o in points:
            _outcome_row(table, "", o, f"{threshold:.4f}")
        Console().print(table)
        Console().print(_recall_table(sc.logits, sc.gold))
    if chart:
        from models.policy_chart import write_curve_chart

        write_curve_chart(chart, points, f"{scored.name}: escalation trade-off")
        click.echo(f"chart: {chart}", err=True)


def _recall_table(logits: Any, gold: Any) -> Table:
    """Top-k recall on held-out data: what a narrowed request of k labels would offer."""
    recall = recall_curve(gold_ranks(logits, gold), logits.shape[1])
    table = Table(title="share of held-out documents whose true label is in the SLM's top k")
    table.add_column("k", justify="right")
    table.add_column("recall", justify="right")
    for k in (1, 2, 3, 5, 7, 10, 15, 20):
        if k <= len(recall):
            table.add_row(str(k), _pct(float(recall[k - 1])))
    return table


@policy.command("show")
@task_option
@model_option("Version (default: the promoted one).")
@handle_errors
def show(task_name: str | None, model_ref: str | None) -> None:
    """The stored policy of a model version, as JSON."""
    ensure_schema()
    with session_scope() as session:
        task = session.get(Task, task_name or get_settings().task)
        if task is None:
            raise ConfigError("no such task")
        number = version_number(model_ref) if model_ref else None
        if number is not None:
            version = find_version(session, task, number)
        elif task.model_version_id is not None:
            version = session.get_one(ModelVersion, task.model_version_id)
        else:
            raise ConfigError(f"task {task.name!r} has no promoted model")
        stored = stored_policy(version.read_manifest())
        if stored is None:
            raise ConfigError(
                f"v{version.version} has no policy: runs use the task threshold "
                f"{task.threshold}; set one with `shiftdown policy set`"
            )
        data = {"version": version.version, **stored.to_dict()}
        click.echo(json.dumps(data, indent=2))
