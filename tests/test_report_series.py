"""The chart series are aggregated in the store, on SQLite and on Postgres, and agree
with the rows they summarise; a large run comes back as a few hundred numbers, not as
its rows."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from datetime import UTC

import pytest
from sqlalchemy import select

from shiftdown.db import session_scope
from shiftdown.report_series import BUCKETS, LATENCY_BINS, TOP_LABELS, run_series
from shiftdown.reporting import run_report
from shiftdown.schema import FrontierCall, Prediction, Run
from shiftdown.settings import get_settings
from tests.fake_run import write_fake_run


@pytest.mark.parametrize("store", ["sqlite_url", "pg_url"])
def test_series_match_the_rows(
    store: str, request: pytest.FixtureRequest, use_settings: Callable[..., None]
) -> None:
    url = request.getfixturevalue(store)
    if store == "pg_url":
        import migrations

        migrations.upgrade(url)
    use_settings(SHIFTDOWN_DATABASE_URL=url)
    fake = write_fake_run(400, escalate_share=0.15, span_s=90.0, queued=16)
    with session_scope() as s:
        series = run_series(s, fake.run_id)
        report = run_report(s, fake.run_id, get_settings())
        run = s.get_one(Run, fake.run_id)
        start = (
            run.created_at.replace(tzinfo=UTC) if not run.created_at.tzinfo else run.created_at
        ).timestamp()
        preds = s.execute(
            select(
                Prediction.stage,
                Prediction.created_at,
                Prediction.latency_ms,
                Prediction.label,
                Prediction.escalated,
            ).where(Prediction.run_id == fake.run_id)
        ).all()
        calls = s.execute(
            select(FrontierCall.created_at, FrontierCall.cost_usd).where(
                FrontierCall.run_id == fake.run_id
            )
        ).all()

    def seconds(ts: object) -> float:
        assert hasattr(ts, "timestamp")
        aware = ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # type: ignore[attr-defined]
        return float(aware.timestamp()) - start

    slm = [p for p in preds if p.stage == "slm"]
    handled = fake.documents - fake.queued
    assert len(slm) == handled
    # Throughput: every prediction in the bucket its time falls in.
    assert sum(series.throughput["slm"]) == handled
    assert sum(series.throughput["frontier"]) == fake.escalated
    width = series.bucket_s
    for p in slm[:50]:
        assert series.throughput["slm"][int((seconds(p.created_at) + 1e-4) / width)] > 0
    assert len(series.throughput["slm"]) <= BUCKETS + 2
    # Cumulative sums by window function: they end at the totals and never fall.
    assert series.spend[0] == (0.0, 0.0) and series.handled[0] == (0.0, 0)
    assert series.spend[-1][1] == pytest.approx(sum(c.cost_usd for c in calls))
    assert series.handled[-1][1] == handled == report.counterfactual.handled_documents
    assert all(a[1] <= b[1] for a, b in zip(series.spend, series.spend[1:], strict=False))
    assert series.spend[-1][0] == pytest.approx(series.span_s)
    # Rolling rate: the documents of the trailing window, per second.
    k = series.window_buckets
    points = series.rolling_rate("slm")
    for t, rate in (points[len(points) // 2], points[-1]):
        bucket_end = (int(t / width - 1e-9) + 1) * width
        since = max(0.0, bucket_end - k * width)
        in_window = sum(1 for p in slm if since <= seconds(p.created_at) + 1e-4 < bucket_end)
        assert rate == pytest.approx(in_window / (t - since)), (t, since)
    # Labels: the view's rates, highest first, only labels with an escalation.
    by_label: dict[str, list[int]] = {}
    for p in slm:
        n_esc = by_label.setdefault(p.label, [0, 0])
        n_esc[0] += 1
        n_esc[1] += bool(p.escalated)
    top = sorted(
        ((label, n, e) for label, (n, e) in by_label.items() if e),
        key=lambda r: (-r[2] / r[1], -r[1], r[0]),
    )[:TOP_LABELS]
    assert [(r.label, r.documents, r.escalated) for r in series.labels] == top
    assert series.n_labels == len(by_label)
    # Latency: every prediction in one log bin, both stages on the same edges.
    assert len(series.latency_edges) == LATENCY_BINS + 1
    assert sum(series.latency_counts["slm"]) == handled
    assert sum(series.latency_counts["frontier"]) == fake.escalated
    latencies = sorted(p.latency_ms for p in slm)
    assert series.latency_edges[0] == pytest.approx(latencies[0])
    # Nearest-rank percentiles, ranked in the store.
    p50 = next(v for i, v in enumerate(latencies, 1) if i >= 0.5 * len(latencies))
    assert report.latency["slm"].p50_ms == pytest.approx(p50, abs=0.01)
    # Queued documents: the saving so far is on the documents through the cascade, and
    # the projection counts the queued ones at the run's escalation rate.
    cf, ahead = report.counterfactual, report.projection
    assert cf.all_frontier_usd_per_1k_docs is not None and ahead is not None
    assert report.escalation_rate is not None
    per_doc = cf.all_frontier_usd_per_1k_docs / 1000
    assert cf.so_far_usd == pytest.approx(per_doc * handled, rel=1e-5)
    assert ahead.queued_documents == fake.queued and ahead.waiting_documents == 0
    expected = fake.queued * report.escalation_rate
    assert ahead.expected_escalations == pytest.approx(expected, abs=0.01)


def _peak_python_bytes(run_id: int) -> int:
    tracemalloc.start()
    with session_scope() as s:
        run_series(s, run_id)
        run_report(s, run_id, get_settings())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_large_run_is_aggregated_in_the_store(
    use_settings: Callable[..., None], sqlite_url: str
) -> None:
    """100,000 documents cost Python no more memory than 1,000: no row comes back."""
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    small = write_fake_run(1_000, span_s=600.0)
    large = write_fake_run(100_000, span_s=3 * 3600.0, batch=32)
    _peak_python_bytes(small.run_id)  # first use: imports, compiled statements
    baseline = _peak_python_bytes(small.run_id)
    peak = _peak_python_bytes(large.run_id)
    # Loading one float per prediction would take more than 3 MB here.
    assert peak < baseline + 1_500_000, (baseline, peak)
    with session_scope() as s:
        series = run_series(s, large.run_id)
    assert sum(series.throughput["slm"]) == 100_000
    assert len(series.spend) <= BUCKETS + 3 and len(series.handled) <= BUCKETS + 3


def test_ten_documents(use_settings: Callable[..., None], sqlite_url: str) -> None:
    """A run of ten documents (one batch) still draws every chart."""
    from cli.report_charts import all_charts

    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    fake = write_fake_run(10, span_s=2.0, batch=10, escalate_share=0.3)
    with session_scope() as s:
        series = run_series(s, fake.run_id)
        report = run_report(s, fake.run_id, get_settings())
    charts = dict(all_charts(report, series))
    assert set(charts) == {"cost", "throughput", "escalation", "latency"}
    assert sum(series.throughput["slm"]) == 10
    assert series.rolling_rate("slm")
