"""The report's four charts, drawn through the shared chart module as inline SVG.

Element ids a reader's tools (and the tests) can find: ``cost-actual``,
``cost-counterfactual``, ``cost-projected``; ``throughput-slm``, ``throughput-frontier``,
``throughput-average``; ``escalation-bar-0`` onwards (highest rate first) and
``escalation-average``; ``latency-slm``, ``latency-frontier``.
"""

from __future__ import annotations

from shiftdown.charts import (
    COLORS,
    chart,
    label_axes,
    log_axis,
    percent_axis,
    to_svg,
    usd_axis,
)
from shiftdown.report_series import RunSeries
from shiftdown.reporting import RunReport
from shiftdown.units import format_pct, format_usd, time_unit


def _time_label(span_s: float) -> tuple[str, float]:
    unit, per = time_unit(span_s)
    return f"time since the run was submitted ({unit})", per


def cost_chart(data: RunReport, series: RunSeries) -> str:
    """Cumulative frontier spend against the all-frontier counterfactual, on one dollar
    axis, with the saving written across the gap (and the projection when documents
    still wait for the frontier)."""
    cf, ahead = data.counterfactual, data.projection
    per_doc = (cf.all_frontier_usd_per_1k_docs or 0.0) / 1000
    xlabel, per = _time_label(series.span_s)
    end = series.span_s / per
    with chart() as (fig, (ax,)):
        counterfactual = [n * per_doc for _, n in series.handled]
        ax.plot(
            [t / per for t, _ in series.handled],
            counterfactual,
            drawstyle="steps-post",
            color=COLORS["frontier"],
            gid="counterfactual",
            label="all-frontier: every document sent to the frontier",
        )
        spend = [usd for _, usd in series.spend]
        ax.plot(
            [t / per for t, _ in series.spend],
            spend,
            drawstyle="steps-post",
            color=COLORS["cascade"],
            gid="actual",
            label="cascade: frontier spend on escalated documents",
        )
        top = max(counterfactual[-1], spend[-1])
        for value, color, dy in ((counterfactual[-1], "frontier", 4), (spend[-1], "cascade", -4)):
            ax.annotate(
                format_usd(value),
                (end, value),
                xytext=(6, dy),
                textcoords="offset points",
                va="center",
                color=COLORS[color],
                fontweight="bold",
            )
        if cf.saving_pct is not None and counterfactual[-1] > spend[-1]:
            ax.annotate(
                "",
                (end, spend[-1]),
                xytext=(end, counterfactual[-1]),
                arrowprops={"arrowstyle": "<->", "color": COLORS["muted"], "lw": 1.2},
                gid="gap",
            )
        so_far = "saved so far" if ahead else "saved"
        lines = [f"{so_far}: {cf.saving_pct:.1f} %"] if cf.saving_pct is not None else []
        if ahead and ahead.projected_usd is not None:
            projected = ahead.projected_usd
            ax.plot(
                [end * 1.02, end * 1.02],
                [spend[-1], projected],
                linestyle=":",
                marker="o",
                markevery=[1],
                color=COLORS["cascade"],
                gid="projected",
                label=f"projected spend once the {ahead.expected_escalations:,.0f} waiting "
                f"documents are paid for: {format_usd(projected)}",
            )
            ax.annotate(
                f"{format_usd(projected)} projected",
                (end * 1.02, projected),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                color=COLORS["cascade"],
                fontsize=8.5,
            )
            top = max(top, projected, cf.all_frontier_usd or 0.0)
            lines.append(
                f"projected: {ahead.saving_pct:.1f} %\n"
                f"({ahead.expected_escalations:,.0f} waiting at "
                f"{format_usd(ahead.usd_per_escalation)})"
            )
        ax.text(
            end * 0.97,
            (counterfactual[-1] + spend[-1]) / 2,
            "\n".join(lines),
            ha="right",
            va="center",
            fontsize=10.5,
            fontweight="bold",
            gid="saving",
            # Readable where it crosses a line.
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 2},
        )
        ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
        ax.set_xlim(0, end * 1.2)
        usd_axis(ax.yaxis)
        ax.legend(loc="upper left")
        label_axes(
            ax,
            "What the cascade spent against sending every document to the frontier",
            xlabel,
            "cumulative frontier cost (US dollars)",
            subtitle=f"one dollar scale for both lines; all-frontier at {format_usd(per_doc)} "
            "a document",
        )
        return to_svg(fig, "cost", "Cumulative cost: cascade against all-frontier")


def throughput_chart(data: RunReport, series: RunSeries) -> str:
    """Documents per second over a rolling window, per stage, with the run's average."""
    xlabel, per = _time_label(series.span_s)
    window = series.window_s
    peak = 0.0
    with chart() as (fig, (ax,)):
        for stage, color, name in (
            ("slm", COLORS["slm"], "small model (SLM)"),
            ("frontier", COLORS["frontier"], "frontier"),
        ):
            points = series.rolling_rate(stage)
            if points and any(r for _, r in points):
                peak = max(peak, *(r for _, r in points))
                ax.plot(
                    [t / per for t, _ in points],
                    [r for _, r in points],
                    color=color,
                    gid=stage,
                    label=f"{name}: documents answered",
                )
        if data.docs_per_s:
            ax.axhline(
                data.docs_per_s,
                color=COLORS["muted"],
                linestyle="--",
                linewidth=1.2,
                gid="average",
                label=f"run average: {data.docs_per_s:,.2f} documents/s with a final label",
            )
        # Headroom above the lines for the legend.
        ax.set_ylim(0, max(peak, data.docs_per_s or 0.0, 0.1) * 1.45)
        ax.set_xlim(0, series.span_s / per * 1.01)
        ax.legend(loc="upper right")
        unit, per_unit = time_unit(window)
        span = f"{window / per_unit:.3g} {unit}"
        label_axes(
            ax,
            f"Documents per second, rolling {span} window",
            xlabel,
            "documents per second",
            subtitle=f"each point: documents answered in the {span} before it, per second; "
            "a dip to zero is a stall",
        )
        return to_svg(fig, "throughput", "Throughput over the run, documents per second")


def escalation_chart(data: RunReport, series: RunSeries) -> str:
    """The labels the small model sent to the frontier most often, by name."""
    labels = series.labels
    height = 1.6 + 0.24 * max(len(labels), 3)
    with chart(height=height) as (fig, (ax,)):
        rates = [100 * r.escalated / r.documents for r in labels]
        y = list(range(len(labels)))
        bars = ax.barh(y, rates, color=COLORS["accent"], height=0.7)
        for i, (bar, row) in enumerate(zip(bars, labels, strict=True)):
            bar.set_gid(f"bar-{i}")
            ax.annotate(
                f"{row.escalated:,} of {row.documents:,}",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        if not labels:
            ax.text(0.5, 0.5, "no document was escalated", ha="center", transform=ax.transAxes)
        ax.set_yticks(y, [r.label for r in labels])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        if data.escalation_rate is not None:
            ax.axvline(
                100 * data.escalation_rate,
                color=COLORS["muted"],
                linestyle="--",
                linewidth=1.2,
                gid="average",
            )
        ax.set_xlim(0, max([*rates, 1.0]) * 1.18)
        percent_axis(ax.xaxis)
        shown = f"top {len(labels)} of {series.n_labels}" if labels else "none predicted"
        label_axes(
            ax,
            "Labels the small model is least sure of",
            "share of the label's documents escalated to the frontier (%)",
            "label predicted by the small model",
            subtitle=f"{shown} labels; bars read 'escalated of predicted'\n"
            f"dashed line: the whole run, {format_pct(data.escalation_rate)}",
        )
        return to_svg(fig, "escalation", "Escalation rate by predicted label")


def latency_chart(data: RunReport, series: RunSeries) -> str:
    """Latency per document, small model against frontier, on one log-scaled ms axis."""
    edges = series.latency_edges
    peak = 0.0
    with chart() as (fig, (ax,)):
        for stage, color, name in (
            ("slm", COLORS["slm"], "small model (SLM)"),
            ("frontier", COLORS["frontier"], "frontier"),
        ):
            counts = series.latency_counts.get(stage, [])
            total = sum(counts)
            lat = data.latency[stage]
            if not total or lat.p50_ms is None or lat.p95_ms is None:
                continue
            peak = max(peak, 100 * max(counts) / total)
            ax.stairs(
                [100 * c / total for c in counts],
                edges,
                color=color,
                linewidth=2,
                gid=stage,
                label=f"{name}: p50 {lat.p50_ms:,.0f} ms, p95 {lat.p95_ms:,.0f} ms "
                f"({total:,} documents)",
            )
            for value, style in ((lat.p50_ms, "--"), (lat.p95_ms, ":")):
                ax.axvline(value, color=color, linestyle=style, linewidth=1)
        if edges:
            ax.set_xscale("log")
            log_axis(ax.xaxis)
            ax.set_xlim(edges[0], edges[-1])
            ax.legend(loc="upper right")
        ax.set_ylim(0, max(peak, 1.0) * 1.4)
        percent_axis(ax.yaxis)
        label_axes(
            ax,
            "Time per document: small model against frontier",
            "latency per document (ms, log scale)",
            "share of the stage's documents (%)",
            subtitle="each stage's histogram sums to 100 %; dashed p50, dotted p95",
        )
        return to_svg(fig, "latency", "Latency distribution per stage")


def all_charts(data: RunReport, series: RunSeries) -> list[tuple[str, str]]:
    """(anchor, SVG) of every chart, in page order."""
    return [
        ("cost", cost_chart(data, series)),
        ("throughput", throughput_chart(data, series)),
        ("escalation", escalation_chart(data, series)),
        ("latency", latency_chart(data, series)),
    ]
