"""PNG of the escalation trade-off (needs matplotlib, from the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from models.policy import Outcome


def write_curve_chart(path: Path, points: Sequence[tuple[float, Outcome]], title: str) -> None:
    """Kept and overall accuracy, and $ per 1,000 documents, against escalation rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [100 * o.escalation_rate for _, o in points]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    kept = [
        (r, 100 * o.kept_accuracy)
        for r, (_, o) in zip(rates, points, strict=True)
        if o.kept_accuracy is not None
    ]
    ax.plot([r for r, _ in kept], [a for _, a in kept], "o-", label="accuracy of kept")
    ax.plot(rates, [100 * o.overall_accuracy for _, o in points], "s-", label="overall accuracy")
    ax.set(xlabel="escalated to the frontier (%)", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    cost = ax.twinx()
    cost.plot(rates, [o.usd_per_1k for _, o in points], "--", color="grey", label="$ / 1k docs")
    cost.set_ylabel("frontier $ per 1,000 documents")
    lines = ax.get_legend_handles_labels()
    extra = cost.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
