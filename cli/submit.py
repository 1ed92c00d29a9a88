"""``shiftdown submit``: push documents to the queue and print the run id."""

from __future__ import annotations

import click

from cli.common import ensure_schema, handle_errors, input_options, load_taxonomy, open_source
from cli.progress import progress_bar
from producers.readers import Format, read_records
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


def submit_source(
    source: str,
    taxonomy: str | None,
    task_name: str | None,
    model_ref: str | None,
    fmt: Format,
    text_field: str,
    id_field: str,
    limit: int | None,
) -> SubmitResult:
    """Create a run and submit ``source`` to it, with a progress bar."""
    from itertools import islice

    ensure_schema()
    s = get_settings()
    run_id, queue = create_run(task_name or s.task, load_taxonomy(taxonomy), model_ref, source)
    click.echo(f"run {run_id}", err=True)
    with open_source(source) as stream:
        records = read_records(stream, fmt, source, text_field, id_field or None)
        if limit is not None:
            records = islice(records, limit)
        with progress_bar(f"run {run_id}", total=estimate_records(source, limit)) as advance:
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
def submit(
    source: str,
    taxonomy: str | None,
    task_name: str | None,
    model_ref: str | None,
    fmt: Format,
    text_field: str,
    id_field: str,
    limit: int | None,
) -> None:
    """Submit documents from SOURCE (a JSONL, CSV or text file, or - for stdin).

    Prints the run id on stdout. With a broker configured, workers classify the
    documents; without one, they are classified in this process.
    """
    result = submit_source(source, taxonomy, task_name, model_ref, fmt, text_field, id_field, limit)
    click.echo(result.run_id)
