"""The report as one self-contained HTML page: a headline in words, the four charts as
inline SVG (drawn by matplotlib through ``shiftdown.charts``: no script, no network,
no files beside it), and every figure in a table."""

from __future__ import annotations

import html

from cli.report_charts import all_charts
from cli.report_summary import input_name, summary_rows
from shiftdown.report_series import RunSeries
from shiftdown.reporting import RunReport
from shiftdown.units import format_pct, format_usd

CAPTIONS = {
    "cost": "Both lines share the dollar axis: the gap between them is the money the "
    "cascade saved. The dotted segment, when shown, adds what the documents still waiting "
    "for the frontier will cost.",
    "throughput": "Documents answered per second by each stage, averaged over a rolling "
    "window so that batches read as a rate; the dashed line is the run's average.",
    "escalation": "Each bar is one label the small model predicted: the share of its "
    "documents that were not confident enough and went to the frontier.",
    "latency": "How long one document took in each stage, as a share of that stage's "
    "documents; the axis is logarithmic so both stages fit.",
}

STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;"
    "max-width:1500px;margin:1.5em auto;padding:0 1em;color:#222}"
    "h1{font-size:1.5em;margin-bottom:.2em}.lead{font-size:1.1em;max-width:70em}"
    ".waiting{background:#fff6e5;border-left:4px solid #dd8452;padding:.5em .8em}"
    ".charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(620px,1fr));gap:20px}"
    "figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:8px}"
    "figcaption{font-size:.85em;color:#555;margin-top:4px}"
    "svg.chart{width:100%;height:auto;display:block}"
    "table{border-collapse:collapse;margin-top:.5em}"
    "th,td{padding:3px 12px;text-align:left;border-bottom:1px solid #e3e3e3;vertical-align:top}"
    "th{font-weight:normal;color:#444}td{font-variant-numeric:tabular-nums}"
    ".note{font-size:.85em;color:#555}"
)


def headline(data: RunReport) -> str:
    """The run in two sentences: what went through, and what it cost against the
    counterfactual."""
    cf, spent = data.counterfactual, data.frontier.usd
    parts = [
        f"{data.documents:,} documents from {html.escape(input_name(data.source))}; "
        f"{format_pct(data.escalation_rate)} escalated to the frontier"
        + (
            f"; {format_pct(data.none_rate)} fit none of the labels."
            if data.none is not None
            else "."
        )
    ]
    if cf.saving_pct is not None:
        parts.append(
            f"The cascade spent <strong>{format_usd(spent)}</strong> where sending those "
            f"{cf.handled_documents:,} documents to the frontier would have cost "
            f"<strong>{format_usd(cf.so_far_usd)}</strong>: a saving of "
            f"<strong>{cf.saving_pct:.1f} %</strong>" + (" so far." if data.projection else ".")
        )
    return f'<p class="lead">{" ".join(parts)}</p>'


def waiting_note(data: RunReport) -> str:
    """A warning line when documents still owe a frontier answer, with the projection."""
    ahead = data.projection
    if not ahead:
        return ""
    text = (
        f"{ahead.waiting_documents:,} documents are waiting for the frontier"
        + (f" and {ahead.queued_documents:,} for the SLM" if ahead.queued_documents else "")
        + "."
    )
    if ahead.projected_usd is not None:
        text += (
            f" Priced at {format_usd(ahead.usd_per_escalation)} per escalation "
            f"({html.escape(ahead.basis)}), the run will spend "
            f"{format_usd(ahead.projected_usd)}: a projected saving of "
            f"<strong>{ahead.saving_pct:.1f} %</strong>."
        )
    return f'<p class="waiting">{text}</p>'


def render_html(report: RunReport, series: RunSeries) -> str:
    """The whole page."""
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in summary_rows(report)
    )
    figures = "".join(
        f'<figure id="chart-{name}">{svg}<figcaption>{html.escape(CAPTIONS[name])}'
        "</figcaption></figure>"
        for name, svg in all_charts(report, series)
    )
    title = f"shiftdown run {report.run_id} · task {report.task} · model {report.model or 'n/a'}"
    basis = html.escape(report.counterfactual.basis)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{headline(report)}{waiting_note(report)}"
        f'<section class="charts">{figures}</section>'
        f'<h2>Figures</h2><table id="summary">{rows}</table>'
        f'<p class="note">All-frontier counterfactual: {basis}.</p></body></html>'
    )
