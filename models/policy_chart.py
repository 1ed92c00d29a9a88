"""PNG of the escalation trade-off, drawn through the shared chart module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from models.policy import Outcome
from shiftdown.charts import COLORS, chart, label_axes, percent_axis, save_png, usd_axis


def write_curve_chart(path: Path, points: Sequence[tuple[float, Outcome]], title: str) -> None:
    """Kept and overall accuracy (one % axis), and $ per 1,000 documents (a dollar axis),
    against escalation rate."""
    rates = [100 * o.escalation_rate for _, o in points]
    kept = [
        (r, 100 * o.kept_accuracy)
        for r, (_, o) in zip(rates, points, strict=True)
        if o.kept_accuracy is not None
    ]
    with chart(width=8, height=4.6) as (fig, (ax,)):
        ax.plot([r for r, _ in kept], [a for _, a in kept], "o-", label="accuracy of kept")
        ax.plot(
            rates, [100 * o.overall_accuracy for _, o in points], "s-", label="overall accuracy"
        )
        label_axes(
            ax,
            title,
            "documents escalated to the frontier (%)",
            "accuracy (%)",
            subtitle="escalating more buys accuracy at the price of the dashed cost line",
        )
        percent_axis(ax.xaxis)
        percent_axis(ax.yaxis)
        cost = ax.twinx()
        cost.grid(False)
        cost.spines["right"].set_visible(True)
        cost.plot(
            rates,
            [o.usd_per_1k for _, o in points],
            "--",
            color=COLORS["muted"],
            label="frontier $ per 1,000 documents",
        )
        cost.set_ylabel("frontier cost per 1,000 documents (US dollars)")
        cost.set_ylim(bottom=0)
        usd_axis(cost.yaxis)
        lines, names = ax.get_legend_handles_labels()
        extra, extra_names = cost.get_legend_handles_labels()
        ax.legend(lines + extra, names + extra_names, loc="lower right")
        save_png(fig, path)
