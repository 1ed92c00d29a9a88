"""``shiftdown eval``: a model version on labelled data, through llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from cli.common import ensure_schema, handle_errors, load_taxonomy
from cli.options import limit_option, model_option, task_option, taxonomy_option
from cli.progress import progress_bar
from models.evaluate import write_chart
from models.scoring import HeldoutData, evaluate_version


@click.command("eval")
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Labelled CSV or JSONL the model was not trained on.",
)
@click.option("--label-column", default="label", show_default=True, help="Column of the label.")
@click.option("--text-column", default="text", show_default=True, help="Column of the text.")
@model_option()
@task_option
@taxonomy_option
@limit_option("Evaluate")
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG: reliability diagram and accuracy vs coverage.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@handle_errors
def eval_command(
    data_path: Path,
    label_column: str,
    text_column: str,
    model_ref: str | None,
    task_name: str | None,
    taxonomy: str | None,
    limit: int | None,
    chart: Path | None,
    as_json: bool,
) -> None:
    """Evaluate a model on a labelled CSV/JSONL file, served exactly as workers serve it."""
    ensure_schema()
    held = HeldoutData(
        model_ref, task_name, load_taxonomy(taxonomy), data_path, text_column, label_column, limit
    )
    result = evaluate_version(held, progress_bar)
    report, name = result.report, result.name
    if chart:
        write_chart(
            chart,
            result.scores.confidence(result.temperature),
            result.scores.correct,
            f"{name} on {data_path.name}",
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"{name} on {data_path.name} ({report['documents']} documents)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"{100 * report['accuracy']:.2f} %")
    table.add_row("macro-F1", f"{100 * report['macro_f1']:.2f} %")
    table.add_row("ECE, uncalibrated (T = 1)", f"{report['ece_uncalibrated']:.4f}")
    table.add_row(f"ECE, served (T = {report['temperature']:g})", f"{report['ece']:.4f}")
    for cov, acc in report["accuracy_at_coverage"].items():
        table.add_row(
            f"accuracy on the most confident {100 * float(cov):.0f} %", f"{100 * acc:.2f} %"
        )
    table.add_row("throughput", f"{report['docs_per_s']} docs/s")
    Console().print(table)
    worst = sorted(report["per_label"].items(), key=lambda kv: kv[1]["accuracy"])[:5]
    click.echo(
        "hardest labels: "
        + ", ".join(f"{k} {100 * v['accuracy']:.0f}% (n={v['support']})" for k, v in worst)
    )
    pairs = report["confused_pairs"][:5]
    click.echo(
        "most confused: " + ", ".join(f"{p['gold']}→{p['predicted']} x{p['count']}" for p in pairs)
    )
    if chart:
        click.echo(f"chart: {chart}")
