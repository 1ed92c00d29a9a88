"""``shiftdown submit``: push documents to the queue and print the run id."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors, load_taxonomy, open_source
from cli.options import SourceOptions, input_options
from cli.progress import progress_bar
from producers.readers import read_records
from producers.submit import SubmitResult, create_run, submit_records
from shiftdown.settings import get_settings


def estimate_records(source: str, limit: int | None) -> int | None:
    """Lines in a file (an upper bound on its records), for the progress bar's ETA.

    One pass of binary reads, about a second per GB; stdin has no length to measure.
    """
    if source == "-":
        return limit
    lines = 0
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return min(lines, limit) if limit is not None else lines


def submit_source(src: SourceOptions) -> SubmitResult:
    """Create a run and submit ``src.source`` to it, with a progress bar."""
    from itertools import islice

    ensure_schema()
    task_name = src.task_name or get_settings().task
    run_id, queue = create_run(task_name, load_taxonomy(src.taxonomy), src.model_ref, src.source)
    click.echo(f"run {run_id}", err=True)
    with open_source(src.source) as stream:
        records = read_records(stream, src.fmt, src.source, src.text_field, src.id_field or None)
        if src.limit is not None:
            records = islice(records, src.limit)
        total = estimate_records(src.source, src.limit)
        with progress_bar(f"run {run_id}", total=total) as advance:
            result = submit_records(run_id, records, queue, on_progress=advance)
    if result.rejected:
        click.echo(
            f"{result.rejected} record(s) rejected (see input_errors; "
            f"`shiftdown report {run_id}` counts them)",
            err=True,
        )
    return result


@click.command()
@input_options
@handle_errors
def submit(src: SourceOptions) -> None:
    """Submit documents from SOURCE (a JSONL, CSV or text file, or - for stdin).

    Prints the run id on stdout. With a broker configured, workers classify the
    documents; without one, they are classified in this process.
    """
    result = submit_source(src)
    click.echo(result.run_id)
