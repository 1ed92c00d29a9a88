"""``shiftdown run``: the whole job in one process, then the report."""

from __future__ import annotations

import click

from cli.common import handle_errors
from cli.options import SourceOptions, input_options
from cli.report import print_report
from cli.submit import submit_source
from workers.app import run_in_process


@click.command()
@input_options
@click.option(
    "--report-format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@handle_errors
def run(src: SourceOptions, report_format: str) -> None:
    """Classify SOURCE end to end in this process and print the run's report.

    Same producer, tasks and store as the distributed setup, with no broker: the SLM
    and frontier stages run inline.
    """
    run_in_process()
    result = submit_source(src)
    print_report(result.run_id, report_format)
