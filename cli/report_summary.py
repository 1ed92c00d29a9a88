"""The report's figures as (measure, value) rows in words, shared by the terminal table
and the HTML page: units written out, sentences instead of data structures, and
nothing printed for a figure that does not apply."""

from __future__ import annotations

from typing import Any

from shiftdown.reporting import RunReport
from shiftdown.units import format_pct, format_usd


def fmt(value: Any, unit: str = "") -> str:
    """A number with thousands separators and a unit; ``n/a`` for None."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.6f}{unit}" if abs(value) < 1 else f"{value:,.2f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def input_name(source: str) -> str:
    """The input as the user named it on the command line."""
    return "standard input" if source == "-" else source


def saving_rows(data: RunReport) -> list[tuple[str, str]]:
    """Spend against the counterfactual: the saving so far and, with documents still
    waiting for the frontier, the saving once they are paid for."""
    cf, ahead = data.counterfactual, data.projection
    spent = data.frontier.usd
    rows = [
        ("all-frontier cost (counterfactual)", format_usd(cf.all_frontier_usd)),
        (
            "all-frontier cost per 1,000 documents",
            format_usd(cf.all_frontier_usd_per_1k_docs),
        ),
    ]
    if cf.saving_pct is not None:
        so_far = "saving so far" if ahead else "saving"
        rows.append(
            (
                f"{so_far} ({cf.handled_documents:,} documents through the cascade)",
                f"{cf.saving_pct:.2f} % ({format_usd(spent)} spent against "
                f"{format_usd(cf.so_far_usd)})",
            )
        )
    if ahead:
        owed = f"{ahead.waiting_documents:,} waiting for the frontier"
        if ahead.queued_documents:
            owed += f", {ahead.queued_documents:,} still queued for the SLM"
        if ahead.projected_usd is None:
            rows.append((f"projected saving ({owed})", f"n/a: {ahead.basis}"))
        else:
            rows.append(
                (
                    f"projected saving ({owed}; {ahead.expected_escalations:,.0f} "
                    f"escalations at {format_usd(ahead.usd_per_escalation)} each, "
                    f"{ahead.basis})",
                    f"{fmt(ahead.saving_pct, ' %')} ({format_usd(ahead.projected_usd)} "
                    "projected spend)",
                )
            )
    return rows


def summary_rows(data: RunReport) -> list[tuple[str, str]]:
    """Every figure of the report as a (measure, value) row."""
    frontier = data.frontier
    rows: list[tuple[str, str]] = [
        ("input", input_name(data.source) + (" (open: figures so far)" if data.open else "")),
        ("documents", fmt(data.documents)),
        ("rejected input records", fmt(data.rejected)),
        ("with a final label", fmt(data.final)),
        *((f"  final from {k}", fmt(v)) for k, v in sorted(data.final_by_stage.items())),
        *((f"  state {k}", fmt(v)) for k, v in sorted(data.states.items())),
        (f"escalated (policy, global threshold {data.threshold})", fmt(data.escalated)),
        ("escalation rate", format_pct(data.escalation_rate)),
        *(
            [("none of the labels (open set)", f"{fmt(data.none)} ({format_pct(data.none_rate)})")]
            if data.none is not None
            else []
        ),
        *(
            [
                (
                    "unfamiliar to the model (escalated only for that)",
                    f"{fmt(data.unfamiliar)} ({fmt(data.unfamiliar_escalated)})",
                )
            ]
            if data.unfamiliar is not None
            else []
        ),
        ("elapsed", fmt(data.elapsed_s, " s")),
        ("throughput", fmt(data.docs_per_s, " docs/s")),
    ]
    for stage, lat in data.latency.items():
        if lat.n:
            rows.append(
                (
                    f"{stage} latency p50 / p95 ({lat.n:,} documents)",
                    f"{fmt(lat.p50_ms)} / {fmt(lat.p95_ms)} ms",
                )
            )
    unpriced = f", {frontier.unpriced_calls} unpriced" if frontier.unpriced_calls else ""
    rows += [
        ("frontier calls", f"{frontier.calls:,}{unpriced}"),
        (
            "frontier tokens (prompt / completion)",
            f"{frontier.prompt_tokens:,} / {frontier.completion_tokens:,}",
        ),
        (f"frontier cost ({frontier.price_model} prices)", format_usd(frontier.usd)),
        ("cost per 1,000 documents", format_usd(data.usd_per_1k_docs)),
        *saving_rows(data),
    ]
    for kind, figures in data.agreement.items():
        if figures.documents:
            rows.append(
                (
                    f"SLM-frontier agreement, {kind} ({figures.documents} documents)",
                    format_pct(figures.agreement),
                )
            )
    be = data.break_even
    rows += [
        ("one-off cost: teacher labels + fine-tuning", format_usd(be.one_off_usd)),
        ("pays for itself after", fmt(be.break_even_documents, " documents")),
    ]
    rows += [("drift", check.message()) for check in data.drift]
    rows += [(f"parked ({n})", reason) for reason, n in data.parked.items()]
    if data.slm_bypass:
        rows.append(("SLM bypassed", data.slm_bypass))
    return rows
