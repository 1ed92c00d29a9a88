"""``shiftdown retrain``: fine-tune a candidate on the teacher set (imports, teach
labels, and every escalation the frontier answered), shadow-evaluate it against the
promoted version, and promote it only if it wins on the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cli.common import ensure_schema, handle_errors
from cli.options import economics_option, renamed_option, target_options, task_option
from cli.progress import progress_bar
from models.promotion import RetrainOptions, retrain_task
from shiftdown.settings import get_settings


@click.command()
@task_option
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
@renamed_option(
    "--data",
    "--heldout",
    "heldout",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Labelled data (text,label) both models are judged on (default: the candidate's "
    "held-out split, which the promoted model may have seen: a conservative judge).",
)
@target_options
@click.option("--per-label", is_flag=True, help="Per-label thresholds for both models.")
@economics_option
@click.option(
    "--epochs", default=1.0, show_default=True, help="Passes over the candidate's training split."
)
@click.option("--valid-frac", default=0.05, show_default=True, help="Held out of training.")
@handle_errors
def retrain(task_name: str | None, **options: Any) -> None:
    """Train a candidate on everything the frontier has taught, and promote it only if
    it beats the promoted version on the target (the promoted one's policy by default)."""
    ensure_schema()
    opts = RetrainOptions(task_name=task_name or get_settings().task, **options)
    result = retrain_task(opts, progress_bar, lambda line: click.echo(line, err=True))
    table = Table(
        title=f"shadow evaluation on {result.examples} held-out: {result.target.describe()}"
    )
    for column in ("model", "escalated", "kept accuracy", "overall", "$ / 1k docs"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for role, c in result.contenders.items():
        o = c.outcome
        table.add_row(
            f"{role} {result.names[role]}",
            f"{100 * o.escalation_rate:.2f} %",
            "-" if o.kept_accuracy is None else f"{100 * o.kept_accuracy:.2f} %",
            f"{100 * o.overall_accuracy:.2f} %",
            f"${o.usd_per_1k:.4f}",
        )
    Console().print(table)
    verb = "promoted" if result.wins else "kept the promoted version; refused"
    click.echo(f"{verb} {result.names['candidate']}: {result.reason}")
