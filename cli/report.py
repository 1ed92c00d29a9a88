"""``shiftdown report``: a run's volume, escalation, speed, latency and cost."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cli.common import ensure_schema, handle_errors
from cli.report_summary import summary_rows
from shiftdown.db import session_scope
from shiftdown.report_series import run_series
from shiftdown.reporting import RunReport, latest_run_id, run_report
from shiftdown.settings import get_settings


def render_table(data: RunReport) -> Table:
    """The report as a two-column rich table."""
    table = Table(
        title=f"shiftdown run {data.run_id} · task {data.task} · model {data.model or 'n/a'}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary_rows(data):
        table.add_row(name, value)
    table.caption = f"counterfactual basis: {data.counterfactual.basis}"
    return table


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested report fields as ``a.b`` columns, for CSV."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def print_report(run_id: int | None, fmt: str, html_path: str | None = None) -> None:
    """Print one run's report (default: the latest run) as a table, JSON or CSV."""
    ensure_schema()
    with session_scope() as session:
        run_id = run_id or latest_run_id(session)
        data = run_report(session, run_id, get_settings())
        if html_path:
            from cli.report_html import render_html

            series = run_series(session, run_id)
            with open(html_path, "w", encoding="utf-8") as f:
                f.write(render_html(data, series))
    if fmt == "json":
        click.echo(json.dumps(data.as_dict(), indent=2, default=str))
    elif fmt == "csv":
        flat = flatten(data.as_dict())
        writer = csv.DictWriter(sys.stdout, fieldnames=list(flat))
        writer.writeheader()
        writer.writerow(flat)
    else:
        Console().print(render_table(data))
    if html_path:
        click.echo(f"wrote {html_path}", err=True)


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output format (--json is --format json).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a self-contained HTML page with charts.",
)
@handle_errors
def report(run_id: int | None, as_json: bool, fmt: str, html_path: str | None) -> None:
    """Report on RUN_ID (default: the latest run)."""
    print_report(run_id, "json" if as_json else fmt, html_path)
