"""The report as one self-contained HTML page with inline SVG charts (no scripts, no
network): throughput over time, cumulative cost against the all-frontier counterfactual,
escalation rate by label, and the latency distribution."""

from __future__ import annotations

import html
from typing import Any

W, H, PAD = 640, 260, 48


def _axes(title: str, x_label: str, y_label: str, body: str, y_top: str = "") -> str:
    t = html.escape(title)
    return (
        f'<figure><svg class="chart" role="img" aria-label="{t}" '
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}"><title>{t}</title>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#333"/>'
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>'
        f'<text x="{W // 2}" y="{H - 10}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="14" y="{H // 2}" transform="rotate(-90 14 {H // 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>"
        f'<text x="{PAD + 4}" y="12" font-size="11">{html.escape(y_top)}</text>'
        f"{body}</svg><figcaption>{t}</figcaption></figure>"
    )


def _scale(values: list[float], lo: float, hi: float) -> list[float]:
    top = max(values) if values and max(values) > 0 else 1.0
    return [lo + (hi - lo) * v / top for v in values]


def _polyline(xs: list[float], ys: list[float], color: str) -> str:
    if not xs:
        return ""
    px = _scale(xs, PAD, W - 10)
    py = [H - PAD - (y - PAD) for y in _scale(ys, PAD, H - 10)]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px, py, strict=True))
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'


def _bars(values: list[float], color: str) -> str:
    if not values:
        return ""
    width = (W - 10 - PAD) / len(values)
    heights = [h - PAD for h in _scale(values, PAD, H - 10)]
    return "".join(
        f'<rect x="{PAD + i * width:.1f}" y="{H - PAD - h:.1f}" width="{max(width - 1, 1):.1f}" '
        f'height="{h:.1f}" fill="{color}"/>'
        for i, h in enumerate(heights)
    )


def throughput_chart(times: list[float]) -> str:
    """Documents classified per time bucket over the run."""
    if times:
        span = max(times) or 1.0
        n = 30
        counts = [0.0] * n
        for t in times:
            counts[min(n - 1, int(n * t / span))] += 1
        rate = [c / (span / n) for c in counts]
    else:
        span, rate = 0.0, []
    top = f"max {max(rate):.1f} docs/s" if rate else ""
    return _axes(
        f"Throughput over {span:.0f} s (docs/s)", "time", "docs/s", _bars(rate, "#4c72b0"), top
    )


def cost_chart(cumulative: list[tuple[float, float, float]]) -> str:
    """Cumulative frontier dollars against what all-frontier would have cost."""
    ts = [c[0] for c in cumulative]
    body = _polyline(ts, [c[2] for c in cumulative], "#c44e52") + _polyline(
        ts, [c[1] for c in cumulative], "#55a868"
    )
    legend = (
        f'<text x="{PAD + 10}" y="24" fill="#c44e52">all-frontier counterfactual</text>'
        f'<text x="{PAD + 10}" y="42" fill="#55a868">actual frontier spend</text>'
    )
    top = max((c[2] for c in cumulative), default=0.0)
    return _axes(
        f"Cumulative cost, USD (counterfactual reaches {top:.4f})", "time", "USD", body + legend
    )


def escalation_chart(by_label: list[tuple[str, int, int]]) -> str:
    """Escalation rate of the 20 labels the small model is least sure of."""
    top = by_label[:20]
    rates = [(esc or 0) / n for _, n, esc in top]
    names = "".join(
        f"<li>{html.escape(label)}: {100 * r:.0f} % of {n}</li>"
        for (label, n, _), r in zip(top, rates, strict=True)
    )
    return _axes(
        "Escalation rate by predicted label (top 20)", "label", "rate", _bars(rates, "#dd8452")
    ) + (f'<ol class="labels">{names}</ol>')


def latency_chart(latency: dict[str, list[float]]) -> str:
    """Histogram of per-document latency of the SLM stage (log-spaced buckets)."""
    values = latency.get("slm", [])
    edges = [5 * 1.5**i for i in range(16)]
    counts = [
        float(sum(lo < v <= hi for v in values))
        for lo, hi in zip([0.0, *edges[:-1]], edges, strict=True)
    ]
    return _axes(
        f"SLM latency distribution ({len(values)} documents, 5 ms to {edges[-1]:.0f} ms)",
        "ms (log buckets)",
        "documents",
        _bars(counts, "#8172b3"),
    )


def render_html(report: dict[str, Any], series: dict[str, Any]) -> str:
    """The whole page."""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in report.items()
        if not isinstance(v, dict)
    )
    charts = "".join(
        [
            throughput_chart(series["slm_times"]),
            cost_chart(series["cumulative_cost"]),
            escalation_chart(series["escalation_by_label"]),
            latency_chart(series["latency_ms"]),
        ]
    )
    title = f"shiftdown run {report['run_id']} ({report['task']})"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1320px;margin:2em auto}"
        "figure{display:inline-block;margin:0 12px 24px 0}svg text{font-size:12px}"
        "table{border-collapse:collapse}"
        "th,td{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}"
        "ol.labels{font-size:11px;columns:2}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{rows}</table><h2>Charts</h2>{charts}</body></html>"
    )
