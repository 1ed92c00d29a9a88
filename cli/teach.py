"""``shiftdown teach``: build a task's teacher set from existing or frontier labels."""

from __future__ import annotations

import csv
from pathlib import Path

import click

from cli.common import ensure_schema, handle_errors, load_taxonomy, open_source
from cli.options import task_option, taxonomy_option, text_column_option
from cli.progress import progress_bar
from models.finetune_manifest import teacher_hash
from models.registry import ensure_task, task_taxonomy
from models.teacher import read_labelled, teacher_set
from producers.readers import Record, read_records
from producers.teach import frontier_label, import_labels
from shiftdown.db import session_scope
from shiftdown.settings import get_settings


def _task(task_name: str | None, taxonomy: str | None) -> str:
    s = get_settings()
    with session_scope() as session:
        return ensure_task(session, task_name or s.task, load_taxonomy(taxonomy), s.threshold).name


@click.group()
def teach() -> None:
    """Teacher labels for fine-tuning: import them, or have the frontier model give them."""


@teach.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-column", default="text", show_default=True, help="Column of the text.")
@click.option("--label-column", default="label", show_default=True, help="Column of the label.")
@task_option
@taxonomy_option
@handle_errors
def import_command(
    path: Path, text_column: str, label_column: str, task_name: str | None, taxonomy: str | None
) -> None:
    """Import labels you already have from a CSV or JSONL file."""
    ensure_schema()
    name = _task(task_name, taxonomy)
    with session_scope() as session:
        from shiftdown.schema import Task

        tax = task_taxonomy(session.get_one(Task, name))
    result = import_labels(name, read_labelled(path, text_column, label_column, tax))
    click.echo(f"{result.added} example(s) added, {result.skipped} already known")


@teach.command("label")
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@text_column_option()
@click.option(
    "--sample", type=int, default=None, help="Label a seeded random sample of N documents."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the sample.")
@task_option
@taxonomy_option
@handle_errors
def label_command(
    source: str,
    text_column: str,
    sample: int | None,
    seed: int,
    task_name: str | None,
    taxonomy: str | None,
) -> None:
    """Have the frontier model label documents of SOURCE (each call costed and recorded)."""
    ensure_schema()
    name = _task(task_name, taxonomy)
    with open_source(source) as stream:
        texts = [
            r.text
            for r in read_records(stream, "auto", source, text_column, None)
            if isinstance(r, Record)
        ]
    with progress_bar("teacher labels", total=min(sample or len(texts), len(texts))) as advance:
        result = frontier_label(name, texts, sample, seed, advance)
    click.echo(
        f"{result.added} example(s) added, {result.skipped} already known, "
        f"{result.failed} failed; frontier cost {result.usd:.4f} USD"
    )


@teach.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@task_option
@handle_errors
def export_command(out: Path, task_name: str | None) -> None:
    """Write the task's teacher set as CSV (text,label) for `shiftdown finetune`."""
    ensure_schema()
    examples = teacher_set(task_name or get_settings().task)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(examples)
    click.echo(f"{len(examples)} example(s), sha256 {teacher_hash(examples)}")
