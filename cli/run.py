"""``shiftdown run``: the whole job in one process, then the report."""

from __future__ import annotations

import click

from cli.common import handle_errors, input_options
from cli.report import print_report
from cli.submit import submit_source
from producers.readers import Format
from workers.app import run_in_process


@click.command()
@input_options
@click.option(
    "--report-format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@handle_errors
def run(
    source: str,
    taxonomy: str | None,
    task_name: str | None,
    model_ref: str | None,
    fmt: Format,
    text_field: str,
    id_field: str,
    limit: int | None,
    report_format: str,
) -> None:
    """Classify SOURCE end to end in this process and print the run's report.

    Same producer, tasks and store as the distributed setup, with no broker: the SLM
    and frontier stages run inline.
    """
    run_in_process()
    result = submit_source(source, taxonomy, task_name, model_ref, fmt, text_field, id_field, limit)
    print_report(result.run_id, report_format)
