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
from shiftdown.db import session_scope
from shiftdown.reporting import latest_run_id, run_report, run_series
from shiftdown.settings import get_settings


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.6f}{unit}" if abs(value) < 1 else f"{value:,.2f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def render_table(data: dict[str, Any]) -> Table:
    """The report as a two-column rich table."""
    table = Table(
        title=f"shiftdown run {data['run_id']} · task {data['task']} · model {data['model']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    frontier, cf = data["frontier"], data["counterfactual"]
    rows: list[tuple[str, str]] = [
        ("documents", _fmt(data["documents"])),
        ("rejected input records", _fmt(data["rejected"])),
        ("with a final label", _fmt(data["final"])),
        *((f"  final from {k}", _fmt(v)) for k, v in sorted(data["final_by_stage"].items())),
        *((f"  state {k}", _fmt(v)) for k, v in sorted(data["states"].items())),
        (f"escalated (policy, global threshold {data['threshold']})", _fmt(data["escalated"])),
        (
            "escalation rate",
            _fmt(None if data["escalation_rate"] is None else 100 * data["escalation_rate"], " %"),
        ),
        ("elapsed", _fmt(data["elapsed_s"], " s")),
        ("throughput", _fmt(data["docs_per_s"], " docs/s")),
    ]
    for stage, lat in data["latency"].items():
        rows.append(
            (f"{stage} latency p50 / p95", f"{_fmt(lat['p50_ms'])} / {_fmt(lat['p95_ms'])} ms")
        )
    rows += [
        ("frontier calls", _fmt(frontier["calls"])),
        (
            "frontier tokens (prompt / completion)",
            f"{frontier['prompt_tokens']:,} / {frontier['completion_tokens']:,}",
        ),
        (f"frontier cost ({frontier['price_model']} prices)", _fmt(frontier["usd"], " USD")),
        ("cost per 1,000 documents", _fmt(data["usd_per_1k_docs"], " USD")),
        ("all-frontier cost (counterfactual)", _fmt(cf["all_frontier_usd"], " USD")),
        ("all-frontier cost per 1,000 documents", _fmt(cf["all_frontier_usd_per_1k_docs"], " USD")),
        ("saving", _fmt(cf["saving_pct"], " %")),
    ]
    for kind, figures in data["agreement"].items():
        if figures["documents"]:
            rows.append(
                (
                    f"SLM-frontier agreement, {kind} ({figures['documents']} documents)",
                    _fmt(100 * figures["agreement"], " %"),
                )
            )
    be = data["break_even"]
    rows += [
        ("one-off cost: teacher labels + fine-tuning", _fmt(be["one_off_usd"], " USD")),
        ("pays for itself after", _fmt(be["break_even_documents"], " documents")),
    ]
    rows += [("drift", check["message"]) for check in data["drift"]]
    rows += [(f"parked ({n})", reason) for reason, n in data["parked"].items()]
    if data["slm_bypass"]:
        rows.append(("SLM bypassed", data["slm_bypass"]))
    for name, value in rows:
        table.add_row(name, value)
    table.caption = f"counterfactual basis: {cf['basis']}"
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

            series = run_series(session, run_id, get_settings())
            with open(html_path, "w", encoding="utf-8") as f:
                f.write(render_html(data, series))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == "csv":
        flat = flatten(data)
        writer = csv.DictWriter(sys.stdout, fieldnames=list(flat))
        writer.writeheader()
        writer.writerow(flat)
    else:
        Console().print(render_table(data))
    if html_path:
        click.echo(f"wrote {html_path}", err=True)


@click.command()
@click.argument("run_id", type=int, required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a self-contained HTML page with charts.",
)
@handle_errors
def report(run_id: int | None, fmt: str, html_path: str | None) -> None:
    """Report on RUN_ID (default: the latest run)."""
    print_report(run_id, fmt, html_path)
