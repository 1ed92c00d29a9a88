"""``shiftdown tasks``: list tasks, and set a task's threshold, queue or taxonomy."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from cli.common import ensure_schema, handle_errors, load_taxonomy
from cli.options import open_set_option, taxonomy_option
from models.registry import ensure_task
from shiftdown.db import session_scope
from shiftdown.errors import ConfigError
from shiftdown.schema import ModelVersion, Run, Task
from shiftdown.settings import get_settings


@click.group()
def tasks() -> None:
    """Classification tasks: a taxonomy, a promoted model and a policy each."""


@tasks.command("list")
@handle_errors
def list_tasks() -> None:
    """Every task with its labels, threshold, queue, promoted model and runs."""
    ensure_schema()
    table = Table()
    for column in ("task", "labels", "threshold", "queue", "model", "runs"):
        table.add_column(column)
    with session_scope() as session:
        runs = dict(
            session.execute(select(Run.task_name, func.count()).group_by(Run.task_name)).all()
        )
        for task in session.scalars(select(Task).order_by(Task.name)):
            version = (
                session.get(ModelVersion, task.model_version_id) if task.model_version_id else None
            )
            table.add_row(
                task.name,
                f"{len(task.taxonomy)}{' + none' if task.open_set else ''}",
                f"{task.threshold:g}",
                task.queue or get_settings().slm_queue,
                f"v{version.version}" if version else "-",
                str(runs.get(task.name, 0)),
            )
    Console().print(table)


@tasks.command("set")
@click.argument("name")
@taxonomy_option
@open_set_option
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Confidence below which documents escalate (a stored policy wins over it).",
)
@click.option("--queue", default=None, help="SLM queue of this task (pin workers with -Q QUEUE).")
@handle_errors
def set_task(
    name: str,
    taxonomy: str | None,
    open_set: bool | None,
    threshold: float | None,
    queue: str | None,
) -> None:
    """Create task NAME or change it; new runs use the new values."""
    ensure_schema()
    s = get_settings()
    with session_scope() as session:
        task = ensure_task(
            session,
            name,
            load_taxonomy(taxonomy),
            threshold if threshold is not None else s.threshold,
            open_set,
        )
        if threshold is not None:
            task.threshold = threshold
        if queue is not None:
            if not queue.strip():
                raise ConfigError("a queue name cannot be empty")
            task.queue = queue
    kind = "open set" if task.open_set else "closed set"
    click.echo(
        f"task {name}: {kind}, threshold {task.threshold:g}, queue {task.queue or s.slm_queue}"
    )
